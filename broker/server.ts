import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import os from 'node:os';
import { Aedes } from 'aedes';
import type pg from 'pg';
import type { Logger } from '../core/log.js';
import { logServerErrors } from '../core/server-errors.js';
import type { CertificateAuthority } from '../core/pki/authority.js';
import type { ChangeFollower } from '../core/registry/index.js';
import type { Refusal } from './admission.js';
import { closeHandlers } from './handlers/close.js';
import { answerUnknownProtocolLevels, connectHandlers } from './handlers/connect.js';
import { authorizePublishHook } from './handlers/publish.js';
import { authorizeSubscribeHook } from './handlers/subscribe.js';
import { IdentityCache } from './identity-cache.js';
import { identityResolver } from './identity.js';
import type { BrokerMetrics } from './metrics.js';
import type { TopicPolicy } from './policy.js';
import { deviceEventRecorder } from './events.js';
import { presenceTracker } from './presence.js';
import { createFrontDoor, peerAddress } from './front-door.js';
import { holdNodeLease } from './node-lease.js';
import { guardPacketSize } from './protection.js';
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
  /** Load balancers (FLEET_TRUSTED_PROXIES) whose connections start with a PROXY header naming the device. */
  proxies?: { trusts(address: string | undefined): boolean };
  /** aedes' emitter and persistence shared with other broker processes (broker/shared-state.ts); in memory when not given. */
  shared?: { mq: unknown; persistence: unknown };
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
  /** Lowered to what the open-file limit allows; derived from it when not given. */
  maxConnections?: number;
  maxPacketBytes?: number;
  keepaliveMaxSeconds?: number;
  /** Session-ticket keys (48 bytes) shared with the other broker workers; random when not given. */
  ticketKeys?: Buffer;
  /**
   * This broker node in the registry's presence (FLEET_NODE_ID; the host name by default): any string,
   * the same across restarts of the same node, so a restart clears its own leftovers at once.
   */
  nodeId?: string;
  /** How long a node's presence outlives its last lease renewal (FLEET_PRESENCE_LEASE); renewed every third of it. */
  presenceLeaseMs?: number;
}

export interface RunningBroker {
  port: number;
  sessions: DeviceSessions;
  /** Refused connections by reason since start. */
  refusals: ReadonlyMap<Refusal, number>;
  /** Connections open at once, in force (the configured cap, or what the open-file limit allows). */
  maxConnections: number;
  /** Takes up the CA's current trust bundle for new handshakes, without a restart. */
  reloadTrust(): void;
  /** Replaces the session-ticket keys (a rotation by the primary). */
  setTicketKeys(keys: Buffer): void;
  /** Whether it still accepts connections: part of the API's readiness. */
  listening(): boolean;
  close(): Promise<void>;
}

export async function startBroker(deps: BrokerDeps, options: BrokerOptions): Promise<RunningBroker> {
  const { log, clock, changes, metrics } = deps;
  const now = () => clock().getTime();
  const events = deviceEventRecorder({ pool: deps.pool, scheduler: deps.scheduler, clock, metrics, log });
  const refusals = refusalCounter(metrics, log, events);
  const { refuse } = refusals;
  const cache = new IdentityCache(options.cacheSize ?? 100_000);
  const resolve = identityResolver({ pool: deps.pool, changes, cache, staleGraceMs: options.staleGraceMs ?? 5 * 60_000, now });
  const admitted = new AdmittedSessions();

  const nodeId = options.nodeId ?? os.hostname();
  // Taken before anything else starts: this node's leftovers are cleared before its first session.
  const lease = await holdNodeLease({
    pool: deps.pool,
    nodeId,
    leaseMs: options.presenceLeaseMs ?? 30_000,
    scheduler: deps.scheduler,
    clock,
    log,
    onLost: () => presence.rewriteOnline(),
  });

  // The hooks need presence, and presence publishes through aedes: build aedes first, then hook it up.
  // The front door's deadline (from the TCP accept) closes a connection without an admitted CONNECT;
  // aedes' own timer (from its handle()) is only a backstop, so it gets twice as long.
  // Brokers sharing an emitter tell each other of new clients under their aedes id ($SYS/<id>/new/clients),
  // and each closes its own session of a client id another one announced: so each needs an id of its own.
  const aedes = new Aedes({
    id: deps.shared ? `fleet-auth-${randomUUID()}` : 'fleet-auth',
    ...(deps.shared ? { mq: deps.shared.mq, persistence: deps.shared.persistence } : {}),
    maxClientsIdLength: 128,
    connectTimeout: 2 * (options.connectTimeoutMs ?? 10_000),
  });
  const presence = presenceTracker({ pool: deps.pool, aedes, log, clock, nodeId });
  // DeviceSessions tells the close handler of each session it ends (only ever after both exist).
  const sessions = new DeviceSessions(deps.scheduler, (session, reason) => close.closedByBroker(session, reason));
  const close = closeHandlers({ sessions, admitted, presence, events, metrics, refusals, log });
  followRegistryChanges({ pool: deps.pool, changes, cache, sessions, metrics, clock, log });

  Object.assign(aedes, {
    ...connectHandlers({
      resolve,
      sessions,
      admitted,
      policy: deps.policy,
      presence,
      events,
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

  // TCP gate, TLS, the certificate check and the connect deadline; only a peer that passed reaches aedes.
  const frontDoor = createFrontDoor(
    {
      ca: deps.ca,
      clock,
      log,
      refuse,
      proxies: deps.proxies,
      onPeer(socket) {
        guardPacketSize(socket, options.maxPacketBytes ?? 262_144, (refusal) => refuse(refusal.reason, peerAddress(socket), refusal));
        answerUnknownProtocolLevels(aedes.handle(socket));
      },
    },
    {
      connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
      connectRate: options.connectRate ?? 50,
      connectBurst: options.connectBurst ?? 100,
      maxConnections: options.maxConnections,
      ticketKeys: options.ticketKeys,
    },
  );
  // CONNACK sent: the connection made it in time.
  aedes.on('clientReady', (client) => frontDoor.admitted(client.conn));
  const front = frontDoor.server;
  try {
    front.listen(options.port, options.host);
    await once(front, 'listening');
  } catch (error) {
    await presence.close();
    await lease.release().catch((err) => log.warn({ err }, 'could not give up the presence lease; it expires on its own'));
    await new Promise<void>((resolve) => aedes.close(() => resolve()));
    await events.close();
    throw error;
  }
  logServerErrors(front, log, 'MQTT broker');
  const port = (front.address() as { port: number }).port;
  log.info({ port }, 'MQTT broker listening (mTLS)');

  return {
    port,
    sessions,
    refusals: refusals.counts,
    maxConnections: frontDoor.maxConnections,
    reloadTrust: () => frontDoor.reloadTrust(),
    setTicketKeys: (keys) => frontDoor.setTicketKeys(keys),
    listening: () => front.listening,
    async close() {
      // Stop accepting, end the sessions (their presence and events are recorded), then write what is pending.
      const stopped = new Promise<void>((resolve) => front.close(() => resolve()));
      close.shuttingDown();
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
      frontDoor.destroyAll();
      await stopped;
      lease.stop();
      await presence.close();
      await lease.release().catch((err) => log.warn({ err }, 'could not give up the presence lease; it expires on its own'));
      await events.close();
    },
  };
}
