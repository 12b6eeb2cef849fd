import { once } from 'node:events';
import tls from 'node:tls';
import { Aedes, type Client } from 'aedes';
import type pg from 'pg';
import type { Logger } from '../core/log.js';
import { logServerErrors } from '../core/server-errors.js';
import type { CertificateAuthority } from '../core/pki/authority.js';
import { secureContextOptions } from '../core/pki/tls.js';
import { normalizeFingerprint } from '../core/pki/x509.js';
import { findIdentityByFingerprint, forgetConnections, type RegistryChange } from '../core/registry/index.js';
import { decideAdmission, type Refusal } from './admission.js';
import type { ChangeFollower } from '../core/registry/index.js';
import { IdentityCache } from './identity-cache.js';
import { identityResolver, RegistryUnavailable } from './identity.js';
import { mayPublish, maySubscribe, rulesFor, type TopicPolicy, type TopicRules } from './policy.js';
import type { BrokerMetrics } from './metrics.js';
import { presenceTracker } from './presence.js';
import { checkKeepalive, connectionGate, gatedServer, guardPacketSize } from './protection.js';
import { DeviceSessions, type Session } from './sessions.js';

export interface BrokerDeps {
  pool: pg.Pool;
  metrics: BrokerMetrics;
  /** Registry changes (revocations) as they commit. */
  changes: ChangeFollower;
  ca: CertificateAuthority;
  policy: TopicPolicy;
  clock: () => Date;
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

/** What the session is allowed, decided once at CONNECT from the policy. */
interface Admitted {
  session: Session;
  rules: TopicRules;
}

export async function startBroker(deps: BrokerDeps, options: BrokerOptions): Promise<RunningBroker> {
  const { log, clock, changes } = deps;
  const now = () => clock().getTime();
  const admitted = new WeakMap<Client, Admitted>();
  const refusals = new Map<Refusal, number>();
  const cache = new IdentityCache(options.cacheSize ?? 100_000);
  const resolve = identityResolver({ pool: deps.pool, changes, cache, staleGraceMs: options.staleGraceMs ?? 5 * 60_000, now });

  const { metrics } = deps;
  const refuse = (reason: Refusal, peer: string | undefined, details: Record<string, unknown> = {}) => {
    refusals.set(reason, (refusals.get(reason) ?? 0) + 1);
    metrics.refused(reason);
    log.warn({ reason, peer, ...details }, 'connection refused');
    return new Error(`connection refused: ${reason}`);
  };

  const sessions = new DeviceSessions(now, (session, reason) =>
    log.info({ deviceId: session.identity.deviceId, serial: session.identity.serial, reason }, 'session closed by the broker'),
  );

  /** A superseded certificate keeps its session until the overlap ends: read the new deadline. */
  const refreshSessions = async (deviceId: string, serial: string | null) => {
    for (const session of sessions.of(deviceId)) {
      if (serial && session.identity.serial !== serial) continue;
      const identity = await findIdentityByFingerprint(deps.pool, session.fingerprint);
      const decision = decideAdmission(identity, session.identity.deviceId, clock());
      if (decision.admitted) sessions.rearm(session, identity!);
      else sessions.end(session, closeReasonOf(decision.reason));
    }
  };

  changes.onChange((change) => {
    cache.forgetDevice(change.deviceId);
    const closed = closeAffected(sessions, change);
    metrics.revocationClosed(closed);
    if (closed > 0) log.info({ deviceId: change.deviceId, kind: change.kind, closed }, 'closed sessions after registry change');
    if (change.kind === 'certificate_superseded') {
      refreshSessions(change.deviceId, change.serial).catch((error) =>
        log.error({ err: error, deviceId: change.deviceId }, 'could not re-read a superseded certificate; its session keeps its old deadline'),
      );
    }
  });

  changes.onGap(() => cache.clear());

  const stale = await forgetConnections(deps.pool);
  if (stale > 0) log.info({ devices: stale }, 'cleared presence left over from an earlier run');

  const aedes = await Aedes.createBroker({
    id: 'fleet-auth',
    maxClientsIdLength: 128,
    connectTimeout: options.connectTimeoutMs ?? 10_000,
    preConnect(client, packet, callback) {
      const started = performance.now();
      const socket = client.conn as tls.TLSSocket;
      const peer = socket.remoteAddress;
      if (checkKeepalive(packet.keepalive ?? 0, options.keepaliveMaxSeconds ?? 1200) !== 'ok') {
        return callback(refuse('keepalive_too_long', peer, { keepalive: packet.keepalive }), false);
      }
      const certificate = socket.getPeerCertificate();
      if (!certificate?.fingerprint256) return callback(refuse('no_certificate', peer), false);
      const fingerprint = normalizeFingerprint(certificate.fingerprint256);
      resolve(fingerprint).then(
        (identity) => {
          const decision = decideAdmission(identity, packet.clientId, clock());
          metrics.observeConnect((performance.now() - started) / 1000);
          if (!decision.admitted) {
            return callback(refuse(decision.reason, peer, { clientId: packet.clientId, deviceId: identity?.deviceId, fingerprint }), false);
          }
          if (socket.destroyed) return callback(new Error('connection closed during lookup'), false);
          // Registered in the same tick as the decision, so any later change finds the session.
          const session = sessions.add(client, identity!, fingerprint);
          admitted.set(client, { session, rules: rulesFor(deps.policy, identity!) });
          presence.connected(identity!.deviceId, identity!.serial, peer ?? null);
          metrics.connected();
          socket.once('close', () => {
            metrics.disconnected();
            if (sessions.count(identity!.deviceId) === 0) presence.disconnected(identity!.deviceId, identity!.serial);
          });
          callback(null, true);
        },
        (error) => {
          if (!(error instanceof RegistryUnavailable)) log.error({ err: error }, 'registry lookup failed');
          callback(refuse('registry_unavailable', peer, { fingerprint, lookup: error instanceof RegistryUnavailable ? error.why : 'failed' }), false);
        },
      );
    },
    authorizePublish(client, packet, callback) {
      const session = client ? admitted.get(client) : undefined;
      if (session && mayPublish(session.rules, packet.topic)) return callback(null);
      metrics.denied('publish');
      log.warn({ deviceId: session?.session.identity.deviceId, topic: packet.topic }, 'publish denied');
      callback(new Error(`publish to ${packet.topic} denied`));
    },
    authorizeSubscribe(client, subscription, callback) {
      const session = admitted.get(client);
      if (session && maySubscribe(session.rules, subscription.topic)) return callback(null, subscription);
      metrics.denied('subscribe');
      log.warn({ deviceId: session?.session.identity.deviceId, topic: subscription.topic }, 'subscribe denied');
      // A null subscription is answered with SUBACK 0x80 and keeps the session open.
      callback(null, null);
    },
  });
  aedes.on('clientError', (client, error) => log.debug({ clientId: client.id, err: error.message }, 'client error'));
  aedes.on('connectionError', (_client, error) => log.debug({ err: error.message }, 'connection error'));
  const presence = presenceTracker({ pool: deps.pool, aedes, log, clock });

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
      aedes.handle(socket);
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
    refusals,
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

function closeReasonOf(reason: Refusal) {
  if (reason === 'suspended') return 'suspended' as const;
  if (reason === 'expired') return 'expired' as const;
  if (reason === 'superseded') return 'superseded' as const;
  return 'revoked' as const;
}

/**
 * What a registry change takes away at once. A superseded certificate keeps its session through the
 * renewal overlap (its deadline is re-read), and a resumed device has nothing to close.
 */
export function closeAffected(sessions: DeviceSessions, change: RegistryChange): number {
  switch (change.kind) {
    case 'device_revoked':
      return sessions.close(change.deviceId, 'revoked');
    case 'device_suspended':
      return sessions.close(change.deviceId, 'suspended');
    case 'certificate_revoked':
      return change.serial ? sessions.close(change.deviceId, 'revoked', change.serial) : 0;
    default:
      return 0;
  }
}
