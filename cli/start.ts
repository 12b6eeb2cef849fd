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
import { createBrokerMetrics, startMetricsServer } from '../broker/metrics.js';
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
import { caKeyStore, rootKeyFile, warnAboutCaKeys } from './ca-keys.js';
import type { AuditEnvironment } from '../dashboard-api/audits/index.js';

export { caKeyStore };

export interface RunningFleet {
  db: Database;
  /** Undefined when metrics are turned off. */
  metricsPort: number | undefined;
  changes: ChangeFollower;
  ca: CertificateAuthority;
  api: RunningApi;
  broker: RunningBroker;
  close(): Promise<void>;
}

/** What a caller (a test) may decide beside the configuration. */
export interface FleetHooks {
  /** When the change feed reconnects after losing its connection; a timer with backoff by default. */
  waitToReconnect?: ChangeFeedOptions['waitToReconnect'];
}

/** Database, CA, provisioning API and broker in one process: what `fleet start` runs. */
export async function startFleet(
  config: FleetConfig,
  log: Logger,
  clock: () => Date = () => new Date(),
  scheduler: Scheduler = createScheduler({ now: () => clock().getTime(), onError: (err) => log.error({ err }, 'a session deadline failed') }),
  hooks: FleetHooks = {},
): Promise<RunningFleet> {
  await ensureDataDir(config.dataDir);
  const db = await openDatabase(config, log);
  const started: { close(): Promise<void> }[] = [db];
  const stopAll = async () => {
    for (const part of started.reverse()) await part.close().catch((error) => log.error({ err: error }, 'shutdown step failed'));
  };
  try {
    const keyStore = caKeyStore(config, log);
    started.push(keyStore);
    const ca = await loadAuthority({ dataDir: config.dataDir, hostnames: config.hostnames, log, now: clock, keyStore, rootCurve: config.rootCurve });
    warnAboutCaKeys(keyStore, config, log);
    const policy = policyFromConfig(config);
    const metrics = createBrokerMetrics();
    const metricsServer =
      config.metricsPort === undefined ? undefined : await startMetricsServer(metrics.registry, { host: config.metricsHost, port: config.metricsPort, log });
    if (metricsServer) started.push(metricsServer);
    const changes = followRegistryChanges({
      connection: db.changeFeedConnection,
      log,
      now: () => clock().getTime(),
      waitToReconnect: hooks.waitToReconnect,
    });
    started.push(changes);
    await changes.ready;
    const broker = await startBroker(
      { pool: db.brokerPool, metrics, changes, ca, clock, scheduler, log, policy: await loadTopicPolicy(config.brokerPolicyFile) },
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
        nodeId: config.brokerNodeId,
        presenceLeaseMs: config.presenceLeaseMs,
      },
    );
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
        metrics: createApiMetrics(metrics.registry),
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
          broker.reloadTrust();
          api.reloadTrust();
          closeSessionsOfRetiredIssuers(broker.sessions, ca.issuers.map((i) => i.certificate.subject), { metrics, log });
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
