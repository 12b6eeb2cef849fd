import { existsSync } from 'node:fs';
import path from 'node:path';
import {
  type ChangeFeedOptions,
  type ChangeFollower,
  followDeviceEvents,
  recordMissingKeyTypes,
  followRegistryChanges,
  keepDeviceEventsFor,
} from '../core/registry/index.js';
import { dashboardRoutes } from '../dashboard-api/app.js';
import { AggregatorRegistry, Registry } from 'prom-client';
import { type BrokerMetrics, createBrokerMetrics, type MetricsText, startMetricsServer } from '../broker/metrics.js';
import { connectSharedState } from '../broker/shared-state.js';
import { loadTopicPolicy } from '../broker/policy.js';
import { closeSessionsOfRetiredIssuers } from '../broker/retirement.js';
import { startBroker, type RunningBroker } from '../broker/server.js';
import { createApiMetrics } from '../provisioning/metrics.js';
import { trustedProxies } from '../provisioning/client-certificate.js';
import { defaultPolicy, type IssuancePolicy } from '../provisioning/policy.js';
import { type RunningApi, startProvisioningApi } from '../provisioning/server.js';
import type { FleetConfig } from '../core/config.js';
import { type Database, ensureDataDir, openDatabase } from '../core/db/database.js';
import type { Logger } from '../core/log.js';
import { type CertificateAuthority, loadAuthority } from '../core/pki/authority.js';
import { keyTypeOfPem } from '../core/pki/key-kinds.js';
import { createScheduler, type Scheduler } from '../core/scheduler.js';
import { startBrokerWorkers } from './broker-workers.js';
import { caKeyStore, rootKeyFile, warnAboutCaKeys } from './ca-keys.js';
import type { AuditEnvironment } from '../dashboard-api/audits/index.js';

export { caKeyStore };

/** What the rest of `fleet start` needs of its broker, in this process or in workers. */
export interface BrokerPart {
  port: number;
  listening(): boolean;
  /** The CA reloaded its issuing CAs (a rotation or retirement in any process). */
  caReloaded(): void;
  close(): Promise<void>;
}

/** The broker in this process, as `fleet start` and each broker worker run it. */
export type LocalBroker = RunningBroker & BrokerPart;

export interface RunningFleet<B extends BrokerPart = LocalBroker> {
  db: Database;
  /** Undefined when metrics are turned off. */
  metricsPort: number | undefined;
  changes: ChangeFollower;
  ca: CertificateAuthority;
  api: RunningApi;
  broker: B;
  close(): Promise<void>;
}

/** What a caller (a test) may decide beside the configuration. */
export interface FleetHooks {
  /** When the change feed reconnects after losing its connection; a timer with backoff by default. */
  waitToReconnect?: ChangeFeedOptions['waitToReconnect'];
}

/** What a broker is started with, beside the configuration. */
export interface BrokerParts {
  db: Database;
  ca: CertificateAuthority;
  changes: ChangeFollower;
  metrics: BrokerMetrics;
  clock: () => Date;
  scheduler: Scheduler;
  log: Logger;
}

/** Database, CA, provisioning API and broker in one process: what `fleet start` runs. */
export function startFleet(
  config: FleetConfig,
  log: Logger,
  clock: () => Date = () => new Date(),
  scheduler: Scheduler = createScheduler({ now: () => clock().getTime(), onError: (err) => log.error({ err }, 'a session deadline failed') }),
  hooks: FleetHooks = {},
): Promise<RunningFleet> {
  return startFleetWith(config, log, clock, scheduler, hooks, (parts) => startLocalBroker(config, parts));
}

/**
 * `fleet start` with FLEET_BROKER_WORKERS above 1: the API, PKI listener and metrics here, and the
 * broker in that many worker processes sharing one listening port (cli/broker-workers.ts).
 */
export function startFleetWithWorkers(config: FleetConfig, log: Logger): Promise<RunningFleet<BrokerPart>> {
  const clock = () => new Date();
  const scheduler = createScheduler({ now: () => clock().getTime(), onError: (err) => log.error({ err }, 'a scheduled task failed') });
  return startFleetWith(config, log, clock, scheduler, {}, ({ db, scheduler: brokerScheduler }) => startBrokerWorkers(config, log, { databaseUrl: db.url, scheduler: brokerScheduler }), workerMetricsSource);
}

/**
 * The broker in this process: its state shared through Redis when FLEET_REDIS_URL is set, and what it
 * does when the CA reloads. `ticketKeys` come from the primary in a broker worker.
 */
export async function startLocalBroker(config: FleetConfig, parts: BrokerParts, ticketKeys?: Buffer): Promise<LocalBroker> {
  const { db, ca, changes, metrics, clock, scheduler, log } = parts;
  const shared = config.redisUrl === undefined ? undefined : await connectSharedState(config.redisUrl, log);
  try {
    const broker = await startBroker(
      { pool: db.brokerPool, metrics, changes, ca, clock, scheduler, log, policy: await loadTopicPolicy(config.brokerPolicyFile), shared,
        // FLEET_TRUSTED_PROXIES, the API's list too: the API believes their forwarded certificates, the broker their PROXY headers.
        proxies: trustedProxies(config.proxy) },
      {
        host: config.listenHost,
        port: config.brokerPort,
        cacheSize: config.brokerCacheSize,
        staleGraceMs: config.brokerStaleGraceMs,
        connectTimeoutMs: config.brokerConnectTimeoutMs,
        connectRate: config.brokerConnectRate,
        connectBurst: config.brokerConnectBurst,
        maxConnections: config.brokerMaxConnections,
        maxPacketBytes: config.brokerMaxPacketBytes,
        keepaliveMaxSeconds: config.brokerKeepaliveMaxSeconds,
        ticketKeys,
        nodeId: config.brokerNodeId,
        presenceLeaseMs: config.presenceLeaseMs,
      },
    );
    const close = broker.close;
    return Object.assign(broker, {
      caReloaded() {
        broker.reloadTrust();
        closeSessionsOfRetiredIssuers(broker.sessions, ca.issuers.map((i) => i.certificate.subject), { metrics, log });
      },
      async close() {
        await close();
        await shared?.close();
      },
    });
  } catch (error) {
    await shared?.close();
    throw error;
  }
}

/** What GET /metrics serves: one registry, or (with workers) the API's and the workers' added up. */
type MetricsSource = (metrics: BrokerMetrics) => MetricsText;

const ownMetrics: MetricsSource = (metrics) => metrics.registry;

/**
 * With workers the broker's figures are theirs: prom-client's AggregatorRegistry asks each over IPC
 * and adds them up (process_* and nodejs_* summed over the workers). The primary adds its API's own.
 */
const workerMetricsSource: MetricsSource = (metrics) => {
  const workers = new AggregatorRegistry();
  const api = new Registry();
  // The API's counters only: the broker's and the process metrics in this registry are the primary's, not the broker's.
  for (const { name } of metrics.registry.getMetricsAsArray()) {
    const metric = metrics.registry.getSingleMetric(name);
    if (metric && name.startsWith('fleet_api_')) api.registerMetric(metric);
  }
  return {
    contentType: workers.contentType,
    metrics: async () => (await api.metrics()) + (await workers.clusterMetrics()),
  };
};

async function startFleetWith<B extends BrokerPart>(
  config: FleetConfig,
  log: Logger,
  clock: () => Date,
  scheduler: Scheduler,
  hooks: FleetHooks,
  startBrokers: (parts: BrokerParts) => Promise<B>,
  metricsSource: MetricsSource = ownMetrics,
): Promise<RunningFleet<B>> {
  await ensureDataDir(config.dataDir);
  const db = await openDatabase(config, log);
  const started: { close(): Promise<void> }[] = [db];
  const stopAll = async () => {
    for (const part of started.reverse()) await part.close().catch((error) => log.error({ err: error }, 'shutdown step failed'));
  };
  try {
    const keyStore = caKeyStore(config, log);
    started.push(keyStore);
    const ca = await loadAuthority({ pool: db.pool, dataDir: config.dataDir, hostnames: config.hostnames, log, now: clock, keyStore, rootCurve: config.rootCurve });
    warnAboutCaKeys(keyStore, config, log);
    const policy = policyFromConfig(config);
    const metrics = createBrokerMetrics();
    const apiMetrics = createApiMetrics(metrics.registry);
    const metricsServer =
      config.metricsPort === undefined
        ? undefined
        : await startMetricsServer(metricsSource(metrics), { host: config.metricsHost, port: config.metricsPort, log });
    if (metricsServer) started.push(metricsServer);
    const changes = followRegistryChanges({
      connection: db.changeFeedConnection,
      log,
      now: () => clock().getTime(),
      waitToReconnect: hooks.waitToReconnect,
    });
    started.push(changes);
    await changes.ready;
    const broker = await startBrokers({ db, ca, changes, metrics, clock, scheduler, log });
    started.push(broker);
    const retention = keepDeviceEventsFor({ pool: db.pool, scheduler, clock, log, retentionMs: config.eventRetentionMs });
    started.push({ close: async () => retention.stop() });
    const events = followDeviceEvents({ connection: eventStreamConnection(db), pool: db.pool, scheduler, log });
    const api = await startProvisioningApi(
      {
        pool: db.pool,
        ca,
        policy,
        enrollmentTokenTtlMs: config.enrollmentTokenTtlMs,
        clock,
        log,
        limits: config.apiLimits,
        metrics: apiMetrics,
        readiness: { broker: broker.listening },
        trustedProxies: trustedProxies(config.proxy),
      },
      { host: config.listenHost, port: config.apiPort, pkiHttpPort: config.pkiHttpPort },
      ({ throttle }) =>
        dashboardRoutes({ pool: db.pool, ca, clock, scheduler, log, throttle, events, maxEventStreams: config.eventStreamsMax, audits: auditEnvironment(config) }),
    );
    started.push(api);
    // Closed before the API: its open event streams end cleanly rather than hold the shutdown.
    started.push(events);
    started.push(recordUnrecordedKeyTypes(db.pool, log));
    // With port 0 the address is known only now; certificates issued from here on name it.
    policy.publicUrl = pkiBaseUrl(config, api);
    // A rotation or retirement (fleet ca) in any process: sign with the new issuing CA, present a server
    // certificate from it, trust only the issuing CAs left, and end the sessions of retired ones.
    changes.onCaChange(() => {
      ca.reload()
        .then(() => {
          broker.caReloaded();
          api.reloadTrust();
          log.info({ issuing: ca.current.certificate.subject, trusted: ca.issuers.length }, 'CA reloaded');
        })
        .catch((error) => log.error({ err: error }, 'reloading the CA failed; still using the issuing CAs loaded before'));
    });
    return { db, metricsPort: metricsServer?.port, changes, ca, api, broker, close: stopAll };
  } catch (error) {
    await stopAll();
    throw error;
  }
}

/** The event streams' LISTEN connection: the change feed's settings, under a name of its own in pg_stat_activity. */
const eventStreamConnection = (db: Database) => ({ ...db.changeFeedConnection, application_name: 'fleet-auth event stream' });

/**
 * Certificates issued before the registry kept key types (sql/010) get theirs from their PEM, once,
 * in the background and a batch at a time, so the key_quality audit need not do it in a request.
 */
function recordUnrecordedKeyTypes(pool: Database['pool'], log: Logger): { close(): Promise<void> } {
  let stopping = false;
  const done = (async () => {
    let recorded = 0;
    for (let n = 1; n > 0 && !stopping; recorded += n) n = await recordMissingKeyTypes(pool, keyTypeOfPem);
    if (recorded > 0) log.info({ certificates: recorded }, 'recorded the key type of certificates issued before key types were kept');
  })().catch((error) => log.warn({ err: error }, 'could not record the key type of older certificates; the key_quality audit does, a batch per request'));
  return {
    close: async () => {
      stopping = true;
      await done;
    },
  };
}

/** What the audits read of this configuration: the key policy, key custody, metrics and logging. */
export function auditEnvironment(config: FleetConfig): AuditEnvironment {
  const rootKey = rootKeyFile(config);
  return {
    allowedKeys: config.allowedKeys,
    maxCertificateLifetimeMs: config.maxCertificateLifetimeMs,
    caKeysEncrypted: config.caPassphrase !== undefined,
    caKeyDir: path.dirname(rootKey),
    rootKeyOnline: () => existsSync(rootKey),
    rootKeyLocation: rootKey,
    metricsEnabled: config.metricsPort !== undefined,
    logLevel: config.logLevel,
  };
}

export const rootCertificatePath = (config: FleetConfig) => path.join(config.dataDir, 'pki', 'root.crt');

export function policyFromConfig(config: FleetConfig): IssuancePolicy {
  return defaultPolicy({
    allowedKeys: config.allowedKeys,
    lifetimeMs: config.certificateLifetimeMs,
    minLifetimeMs: config.minCertificateLifetimeMs,
    maxLifetimeMs: config.maxCertificateLifetimeMs,
    trustDomain: config.trustDomain,
    publicUrl: pkiBaseUrl(config, { port: config.apiPort, pkiHttpPort: config.pkiHttpPort }),
    renewalOverlapMs: config.renewalOverlapMs,
    allowKeyReuse: config.allowKeyReuse,
    renewAfterExpiryMs: config.renewAfterExpiryMs,
  });
}

/** Where certificates send relying parties: the plain-HTTP PKI listener, or the API while it is off. */
function pkiBaseUrl(config: FleetConfig, ports: { port: number; pkiHttpPort: number | undefined }): string {
  if (ports.pkiHttpPort === undefined) return config.publicUrl ?? `https://localhost:${ports.port}`;
  return config.pkiPublicUrl ?? `http://localhost:${ports.pkiHttpPort}`;
}
