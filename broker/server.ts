import { once } from 'node:events';
import tls from 'node:tls';
import { Aedes } from 'aedes';
import type pg from 'pg';
import type { Logger } from '../core/log.js';
import { logServerErrors } from '../core/server-errors.js';
import type { CertificateAuthority } from '../core/pki/authority.js';
import { secureContextOptions } from '../core/pki/tls.js';
import { type ChangeFollower, forgetConnections } from '../core/registry/index.js';
import type { Refusal } from './admission.js';
import { closeHandlers } from './handlers/close.js';
import { answerUnknownProtocolLevels, connectHandlers } from './handlers/connect.js';
import { authorizePublishHook } from './handlers/publish.js';
import { authorizeSubscribeHook } from './handlers/subscribe.js';
import { IdentityCache } from './identity-cache.js';
import { identityResolver } from './identity.js';
import type { BrokerMetrics } from './metrics.js';
import type { TopicPolicy } from './policy.js';
import { presenceTracker } from './presence.js';
import { connectionGate, gatedServer, guardPacketSize } from './protection.js';
import { refusalCounter } from './refusals.js';
import { followRegistryChanges } from './registry-changes.js';
import { AdmittedSessions } from './session.js';
import { DeviceSessions } from './sessions.js';
import type { Scheduler } from '../core/scheduler.js';

export interface BrokerDeps {
  /** The broker's own connections (identity lookups, presence), apart from the API's. */
  pool: pg.Pool;
  metrics: BrokerMetrics;
  /** Registry changes (revocations) as they commit. */
  changes: ChangeFollower;
  ca: CertificateAuthority;
  policy: TopicPolicy;
  clock: () => Date;
  /** Ends sessions at their certificate's expiry or overlap end; runs on the same time as `clock`. */
  scheduler: Scheduler;
  log: Logger;
}

export interface BrokerOptions {
  host?: string;
  port: number;
  /** Identities kept in memory; the database is asked only on a miss. */
  cacheSize?: number;
  /** How long cached identities still admit new connections after the registry became unreachable. */
  staleGraceMs?: number;
  /** How long a client may hold a connection (TLS handshake, then CONNECT) before it is dropped. */
  connectTimeoutMs?: number;
  /** New connections per second each address may open (with this burst), and at most this many at once. */
  connectRate?: number;
  connectBurst?: number;
  maxConnections?: number;
  maxPacketBytes?: number;
  keepaliveMaxSeconds?: number;
}

export interface RunningBroker {
  port: number;
  sessions: DeviceSessions;
  /** Refused connections by reason since start. */
  refusals: ReadonlyMap<Refusal, number>;
  /** Takes up the CA's current trust bundle for new handshakes, without a restart. */
  reloadTrust(): void;
  close(): Promise<void>;
}

export async function startBroker(deps: BrokerDeps, options: BrokerOptions): Promise<RunningBroker> {
  const { log, clock, changes, metrics } = deps;
  const now = () => clock().getTime();
  const refusals = refusalCounter(metrics, log);
  const { refuse } = refusals;
  const cache = new IdentityCache(options.cacheSize ?? 100_000);
  const resolve = identityResolver({ pool: deps.pool, changes, cache, staleGraceMs: options.staleGraceMs ?? 5 * 60_000, now });
  const admitted = new AdmittedSessions();

  const stale = await forgetConnections(deps.pool);
  if (stale > 0) log.info({ devices: stale }, 'cleared presence left over from an earlier run');

  // The hooks need presence, and presence publishes through aedes: build aedes first, then hook it up.
  const aedes = new Aedes({ id: 'fleet-auth', maxClientsIdLength: 128, connectTimeout: options.connectTimeoutMs ?? 10_000 });
  const presence = presenceTracker({ pool: deps.pool, aedes, log, clock });
  // DeviceSessions tells the close handler of each session it ends (only ever after both exist).
  const sessions = new DeviceSessions(deps.scheduler, (session, reason) => close.closedByBroker(session, reason));
  const close = closeHandlers({ sessions, admitted, presence, metrics, refusals, log });
  followRegistryChanges({ pool: deps.pool, changes, cache, sessions, metrics, clock, log });

  Object.assign(aedes, {
    ...connectHandlers({
      resolve,
      sessions,
      admitted,
      policy: deps.policy,
      presence,
      opened: close.opened,
      metrics,
      refusals,
      clock,
      log,
      keepaliveMaxSeconds: options.keepaliveMaxSeconds ?? 1200,
    }),
    authorizePublish: authorizePublishHook({ admitted, metrics, log }),
    authorizeSubscribe: authorizeSubscribeHook({ admitted, metrics, log }),
  });
  aedes.on('clientError', close.failed);
  aedes.on('connectionError', close.failed);
  await aedes.listen();

  const open = new Set<tls.TLSSocket>();
  const server = tls.createServer(
    {
      ...secureContextOptions(deps.ca),
      requestCert: true,
      // OpenSSL checks chain, validity and EKU during the handshake; the verdict is read below rather
      // than turned into a bare alert, so each refusal is counted by its real reason. A peer that
      // fails is destroyed before aedes sees it: it never sends a byte of MQTT.
      rejectUnauthorized: false,
      handshakeTimeout: options.connectTimeoutMs ?? 10_000,
    },
    (socket) => {
      const refusal = peerRefusal(socket);
      if (refusal) {
        refuse(refusal, socket.remoteAddress, { tlsError: String(socket.authorizationError ?? 'no certificate') });
        socket.destroy();
        return;
      }
      open.add(socket);
      socket.once('close', () => open.delete(socket));
      guardPacketSize(socket, options.maxPacketBytes ?? 262_144, (refusal) => refuse(refusal.reason, socket.remoteAddress, refusal));
      answerUnknownProtocolLevels(aedes.handle(socket));
    },
  );
  server.on('tlsClientError', (error: NodeJS.ErrnoException, socket) => {
    refuse('tls_handshake_failed', socket.remoteAddress, { tlsError: error.code ?? error.message });
  });

  // Rate and connection limits act on plain TCP, before any TLS work is spent on a refused peer.
  const gate = connectionGate({
    perAddressPerSecond: options.connectRate ?? 50,
    burst: options.connectBurst ?? 100,
    maxConnections: options.maxConnections ?? 16_000,
    clock: now,
  });
  const front = gatedServer(server, gate, (decision, address) => refuse(decision, address));
  try {
    front.listen(options.port, options.host);
    await once(front, 'listening');
  } catch (error) {
    await presence.close();
    await new Promise<void>((resolve) => aedes.close(() => resolve()));
    throw error;
  }
  logServerErrors(front, log, 'MQTT broker');
  const port = (front.address() as { port: number }).port;
  log.info({ port }, 'MQTT broker listening (mTLS)');

  return {
    port,
    sessions,
    refusals: refusals.counts,
    reloadTrust: () => server.setSecureContext(secureContextOptions(deps.ca)),
    async close() {
      // Stop accepting, end the sessions (their presence is recorded), then write what is pending.
      const stopped = new Promise<void>((resolve) => front.close(() => resolve()));
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
      for (const socket of open) socket.destroy();
      await stopped;
      await presence.close();
    },
  };
}

const UNKNOWN_CA_ERRORS = new Set([
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_SIGNATURE_FAILURE',
]);

/** Why OpenSSL did not verify a client certificate, as a counted reason; undefined when it did. */
export function peerRefusal(socket: tls.TLSSocket): Refusal | undefined {
  if (socket.authorized) return undefined;
  if (!socket.getPeerCertificate()?.fingerprint256) return 'no_certificate';
  const code = String(socket.authorizationError);
  if (code === 'CERT_HAS_EXPIRED') return 'expired';
  if (code === 'CERT_NOT_YET_VALID') return 'not_yet_valid';
  if (UNKNOWN_CA_ERRORS.has(code)) return 'unknown_ca';
  return 'tls_handshake_failed';
}
