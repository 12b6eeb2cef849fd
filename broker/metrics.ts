import { once } from 'node:events';
import http from 'node:http';
import type { Logger } from '../core/log.js';
import { logServerErrors } from '../core/server-errors.js';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

export type DeniedAction = 'publish' | 'subscribe';

/**
 * What the broker tells Prometheus. Each fleet gets a registry of its own rather than prom-client's
 * global one, so tests and several fleets in one process never register a metric twice.
 */
export interface BrokerMetrics {
  readonly registry: Registry;
  /** A connection closed before CONNACK; `reason` must come from a closed set (each value is a series). */
  refused(reason: string): void;
  denied(action: DeniedAction): void;
  /** A session was admitted; pair every call with one `disconnected()` when its socket closes. */
  connected(): void;
  disconnected(): void;
  /** Time from CONNECT arriving to the admission decision. */
  observeConnect(seconds: number): void;
  /** Sessions closed because a registry change (revocation, suspension) took their identity away. */
  revocationClosed(sessions: number): void;
  /** Sessions closed because the issuing CA of their certificate was retired. */
  retirementClosed(sessions: number): void;
  /** Device events not recorded: the pending buffer was full (the database slow or away). */
  eventsDropped(events: number): void;
}

/**
 * The registry lookup dominates the connect path: sub-millisecond from a warm pool, seconds when the
 * database struggles; the top bucket sits at the broker's CONNECT timeout.
 */
const CONNECT_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export function createBrokerMetrics(): BrokerMetrics {
  const registry = new Registry();
  // Process and Node.js metrics keep their standard names (process_*, nodejs_*) so stock dashboards work.
  collectDefaultMetrics({ register: registry });

  const refusals = new Counter({
    name: 'fleet_broker_refusals_total',
    help: 'Connections closed before CONNACK, by reason (TLS failures, unknown or revoked certificates, rate limits, oversized packets).',
    labelNames: ['reason'] as const,
    registers: [registry],
  });
  const denials = new Counter({
    name: 'fleet_broker_denials_total',
    help: 'Publishes and subscriptions refused by the topic policy, by action.',
    labelNames: ['action'] as const,
    registers: [registry],
  });
  const sessions = new Gauge({
    name: 'fleet_broker_sessions',
    help: 'MQTT sessions open now.',
    registers: [registry],
  });
  const admitted = new Counter({
    name: 'fleet_broker_sessions_admitted_total',
    help: 'MQTT sessions admitted since start; its rate is the connect rate.',
    registers: [registry],
  });
  const connectSeconds = new Histogram({
    name: 'fleet_broker_connect_seconds',
    help: 'Time from CONNECT to the admission decision (registry lookup and policy), in seconds.',
    buckets: CONNECT_BUCKETS,
    registers: [registry],
  });
  const revocationClosed = new Counter({
    name: 'fleet_broker_revocation_closed_sessions_total',
    help: 'Live sessions closed because their device or certificate was revoked or suspended.',
    registers: [registry],
  });
  const retirementClosed = new Counter({
    name: 'fleet_broker_retirement_closed_sessions_total',
    help: 'Live sessions closed because the issuing CA of their certificate was retired (fleet ca retire).',
    registers: [registry],
  });
  const eventsDropped = new Counter({
    name: 'fleet_broker_events_dropped_total',
    help: 'Device events (connects, disconnects, refusals) not recorded because the pending buffer was full.',
    registers: [registry],
  });
  // Children bound once, so a count is an increment and not a label lookup. Both denial series exist
  // from the start, so a rate() over them is 0 rather than absent.
  const denied: Record<DeniedAction, { inc(): void }> = { publish: denials.labels('publish'), subscribe: denials.labels('subscribe') };
  denials.inc({ action: 'publish' }, 0);
  denials.inc({ action: 'subscribe' }, 0);
  const refusedBy = new Map<string, { inc(): void }>();
  const refusedChild = (reason: string) => {
    let child = refusedBy.get(reason);
    if (!child) refusedBy.set(reason, (child = refusals.labels(reason)));
    return child;
  };

  return {
    registry,
    refused: (reason) => refusedChild(reason).inc(),
    denied: (action) => denied[action].inc(),
    connected() {
      sessions.inc();
      admitted.inc();
    },
    disconnected: () => sessions.dec(),
    observeConnect: (seconds) => connectSeconds.observe(seconds),
    revocationClosed: (count) => {
      if (count > 0) revocationClosed.inc(count);
    },
    retirementClosed: (count) => {
      if (count > 0) retirementClosed.inc(count);
    },
    eventsDropped: (count) => {
      if (count > 0) eventsDropped.inc(count);
    },
  };
}

/** What GET /metrics serves: a registry, or several added up. */
export interface MetricsText {
  contentType: string;
  metrics(): Promise<string>;
}

export interface MetricsServer {
  port: number;
  close(): Promise<void>;
}

/**
 * Serves GET /metrics over plain HTTP for a local Prometheus. Plain on purpose: it carries counts,
 * no identities, and binds to loopback unless told otherwise (FLEET_METRICS_HOST).
 */
export async function startMetricsServer(registry: MetricsText, options: { host: string; port: number; log: Logger }): Promise<MetricsServer> {
  const server = http.createServer((req, res) => {
    const pathname = new URL(req.url ?? '/', 'http://metrics').pathname;
    if (pathname !== '/metrics' || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('not found\n');
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(req.method === 'HEAD' ? undefined : text),
      () => res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' }).end('collecting metrics failed\n'),
    );
  });
  server.listen(options.port, options.host);
  await once(server, 'listening');
  logServerErrors(server, options.log, 'metrics');
  return {
    port: (server.address() as { port: number }).port,
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // A scraper keeps its connection alive between scrapes; without this close would wait for it.
      server.closeAllConnections();
      await closed;
    },
  };
}
