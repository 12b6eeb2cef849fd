import cluster, { type Worker } from 'node:cluster';
import { fileURLToPath } from 'node:url';
import { AggregatorRegistry } from 'prom-client';
import { createBrokerMetrics } from '../broker/metrics.js';
import { asksForTicketKeys, requestTicketKeys, rotateTicketKeys } from '../broker/session-tickets.js';
import { type FleetConfig, loadConfig } from '../core/config.js';
import { openDatabase } from '../core/db/database.js';
import { FleetError } from '../core/errors.js';
import { type Logger, logTo } from '../core/log.js';
import { loadAuthority } from '../core/pki/authority.js';
import { followRegistryChanges } from '../core/registry/index.js';
import { createScheduler, type Scheduler } from '../core/scheduler.js';
import { caKeyStore } from './ca-keys.js';
import type { BrokerPart, LocalBroker } from './start.js';

/*
 * FLEET_BROKER_WORKERS above 1: the broker runs in that many processes (node:cluster), which share
 * one listening port (the primary accepts and hands connections round-robin), one set of TLS
 * session-ticket keys (from the primary, over IPC: broker/session-tickets.ts), and their MQTT state
 * through Redis (broker/shared-state.ts). Each worker has its own database pool, change-feed
 * follower, scheduler and CA (read only: the trust bundle and the server certificate), so a
 * revocation reaches each worker's sessions as it reaches a single broker's.
 */

/** Set in a worker's environment: this file, run by the cluster, is a broker worker. */
const WORKER_MARK = 'FLEET_BROKER_WORKER';
/**
 * Which of the N workers this is (0..N-1); a replacement takes the dead worker's slot, so its presence
 * node id (`<FLEET_NODE_ID>/w<slot>`) is the same and it clears that worker's leftovers at once.
 */
const WORKER_SLOT = 'FLEET_BROKER_WORKER_SLOT';
/** A worker that dies is replaced after this pause, so one that cannot start does not spin. */
const RESTART_DELAY_MS = 1000;
/** How long a worker has to close its sessions and write its presence at shutdown. */
const STOP_TIMEOUT_MS = 20_000;

type WorkerMessage = { type: 'fleet:broker-listening'; port: number } | { type: 'fleet:stop' };

const isListening = (message: unknown): message is { type: 'fleet:broker-listening'; port: number } =>
  typeof message === 'object' && message !== null && (message as WorkerMessage).type === 'fleet:broker-listening';

/** The primary's side: forks the workers, restarts one that dies, and stops them all at shutdown. */
export async function startBrokerWorkers(config: FleetConfig, log: Logger, o: { databaseUrl: string; scheduler: Scheduler }): Promise<BrokerPart> {
  // The embedded database's URL, when there is one: workers join it rather than start their own.
  const env = { [WORKER_MARK]: '1', DATABASE_URL: o.databaseUrl };
  cluster.setupPrimary({ exec: fileURLToPath(import.meta.url), args: [] });
  const live = new Set<Worker>();
  const ready = new Set<Worker>();
  let stopping = false;
  let port = 0;
  const tickets = rotateTicketKeys({
    scheduler: o.scheduler,
    rotated(message) {
      for (const worker of live) if (worker.isConnected()) worker.send(message);
      log.info({ workers: live.size }, 'rotated the broker session-ticket keys');
    },
  });

  const fork = (slot: number): Worker => {
    const worker = cluster.fork({ ...env, [WORKER_SLOT]: String(slot) });
    live.add(worker);
    worker.on('message', (message: unknown) => {
      if (asksForTicketKeys(message)) worker.send(tickets.message());
      else if (isListening(message)) {
        port = message.port;
        ready.add(worker);
      }
    });
    worker.once('exit', (code, signal) => {
      live.delete(worker);
      const wasReady = ready.delete(worker);
      if (stopping || !wasReady) return;
      log.error({ workerPid: worker.process.pid, code, signal }, 'a broker worker exited; starting another');
      setTimeout(() => {
        if (!stopping) fork(slot);
      }, RESTART_DELAY_MS).unref();
    });
    return worker;
  };

  // A Ctrl-C or a service manager's SIGTERM reaches the workers too (one process group), and they stop
  // by themselves: from then on none is restarted, though the primary stops them only later.
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  const noRestarts = () => void (stopping = true);
  for (const signal of signals) process.on(signal, noRestarts);

  const stopAll = async () => {
    stopping = true;
    for (const signal of signals) process.off(signal, noRestarts);
    tickets.stop();
    await Promise.all([...live].map(stopWorker));
  };

  try {
    await Promise.all(Array.from({ length: config.brokerWorkers }, (_, slot) => started(fork(slot))));
  } catch (error) {
    await stopAll();
    throw error;
  }
  log.info({ workers: config.brokerWorkers, port, pids: [...ready].map((w) => w.process.pid) }, 'broker workers listening');
  return {
    get port() {
      return port;
    },
    listening: () => ready.size > 0,
    // Each worker follows the change feed and reloads its CA itself.
    caReloaded() {},
    close: stopAll,
  };
}

/** Resolves once the worker listens; rejects when it exits first (its own log says why). */
function started(worker: Worker): Promise<void> {
  return new Promise((resolve, reject) => {
    const onMessage = (message: unknown) => {
      if (!isListening(message)) return;
      worker.off('exit', onExit);
      worker.off('message', onMessage);
      resolve();
    };
    const onExit = (code: number | null, signal: string | null) =>
      reject(new FleetError('broker_worker_failed', 1, `a broker worker stopped while starting (${signal ?? `exit code ${code}`}); its log line above says why`));
    worker.on('message', onMessage);
    worker.once('exit', onExit);
  });
}

/** Asks a worker to close its sessions and exit; kills it if it has not after STOP_TIMEOUT_MS. */
function stopWorker(worker: Worker): Promise<void> {
  return new Promise((resolve) => {
    if (worker.isDead()) return resolve();
    const timer = setTimeout(() => worker.process.kill('SIGKILL'), STOP_TIMEOUT_MS);
    worker.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    if (worker.isConnected()) worker.send({ type: 'fleet:stop' } satisfies WorkerMessage);
    else worker.process.kill('SIGTERM');
  });
}

/** A worker's side: its own pool, change feed, scheduler, CA and broker; tells the primary when it listens. */
async function runBrokerWorker(): Promise<void> {
  const own = loadConfig();
  const slot = process.env[WORKER_SLOT] ?? '0';
  const config = { ...own, brokerNodeId: `${own.brokerNodeId}/w${slot}` };
  const log = logTo(1, config.logLevel, config.logFormat).child({ worker: Number(slot) });
  const { startLocalBroker } = await import('./start.js');
  let broker: LocalBroker | undefined;
  const ticketKeys = await requestTicketKeys(process, (keys) => broker?.setTicketKeys(keys));
  const clock = () => new Date();
  const scheduler = createScheduler({ now: () => Date.now(), onError: (err) => log.error({ err }, 'a session deadline failed') });
  const db = await openDatabase(config, log);
  const started: { close(): Promise<void> }[] = [db];
  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      for (const part of started.reverse()) await part.close().catch((error) => log.error({ err: error }, 'shutdown step failed'));
    })());
  const stopAndExit = (code: number) => void stop().finally(() => process.exit(code));
  process.on('message', (message: unknown) => {
    if ((message as WorkerMessage | undefined)?.type === 'fleet:stop') stopAndExit(0);
  });
  // The primary is gone (killed): nobody would stop this worker or hand it ticket keys any more.
  process.on('disconnect', () => stopAndExit(0));
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => stopAndExit(0));
  try {
    const keyStore = caKeyStore(config, log);
    started.push(keyStore);
    const ca = await loadAuthority({ pool: db.pool, dataDir: config.dataDir, hostnames: config.hostnames, log, now: clock, keyStore, rootCurve: config.rootCurve });
    const metrics = createBrokerMetrics();
    // The primary's GET /metrics asks each worker for these over IPC and adds them up; constructing
    // an AggregatorRegistry is what makes prom-client answer those requests in a worker.
    new AggregatorRegistry();
    AggregatorRegistry.setRegistries([metrics.registry]);
    const changes = followRegistryChanges({ connection: db.changeFeedConnection, log, now: () => Date.now() });
    started.push(changes);
    await changes.ready;
    broker = await startLocalBroker(config, { db, ca, changes, metrics, clock, scheduler, log }, ticketKeys);
    started.push(broker);
    const running = broker;
    changes.onCaChange(() => {
      ca.reload()
        .then(() => running.caReloaded())
        .catch((error) => log.error({ err: error }, 'reloading the CA failed; still using the issuing CAs loaded before'));
    });
    process.send?.({ type: 'fleet:broker-listening', port: broker.port } satisfies WorkerMessage);
  } catch (error) {
    log.error({ err: error }, error instanceof FleetError ? error.message : 'the broker worker could not start');
    stopAndExit(1);
  }
}

// Not awaited at the top level: start.ts imports this module, and the worker imports start.ts.
if (cluster.isWorker && process.env[WORKER_MARK] === '1') {
  runBrokerWorker().catch((error: unknown) => {
    process.stderr.write(`broker worker: ${(error as Error).message}\n`);
    process.exit(1);
  });
}
