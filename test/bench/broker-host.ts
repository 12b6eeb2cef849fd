/**
 * The process a benchmarked broker runs in, so its CPU time and resident memory are its own and not
 * mixed with the MQTT clients'. Forked by broker.bench.ts with --expose-gc; it is told over IPC what
 * to host: the whole fleet (database, CA, API, our broker) or a bare aedes behind the same TLS.
 */
import { once } from 'node:events';
import type { SecureContextOptions } from 'node:tls';
import tls from 'node:tls';
import { Aedes } from 'aedes';
import { loadConfig } from '../../core/config.js';
import { startFleet } from '../../cli/start.js';
import { silentLogger } from '../../core/log.js';
import { secureContextOptions } from '../../core/pki/tls.js';
import { createOperatorToken } from '../../core/registry/index.js';

export interface FleetPlace {
  dataDir: string;
  /** Unset: the embedded PostgreSQL under dataDir. */
  databaseUrl?: string;
}

export type HostRequest =
  | ({ type: 'start-fleet' } & FleetPlace)
  | { type: 'start-aedes'; tls: SecureContextOptions }
  | { type: 'snapshot' }
  | { type: 'stop' };

/** CPU in microseconds (user + system) either side of a forced GC, and the RSS after it. */
export interface Snapshot {
  cpuBeforeGc: number;
  cpuAfterGc: number;
  rss: number;
}

export type HostReply =
  | { type: 'started'; brokerPort: number; fleet?: { apiUrl: string; rootPem: string; adminToken: string; serverTls: SecureContextOptions } }
  | { type: 'snapshot'; snapshot: Snapshot }
  | { type: 'failed'; message: string };

interface Hosted {
  brokerPort: number;
  close(): Promise<void>;
}

/**
 * The whole fleet as `fleet start` runs it, on a data directory and database the benchmark owns, so
 * a second process can start on what the first enrolled and begin with a heap of its own.
 */
async function hostFleet(where: FleetPlace): Promise<{ hosted: Hosted; reply: HostReply }> {
  const config = loadConfig({
    FLEET_DATA_DIR: where.dataDir,
    FLEET_API_PORT: '0',
    FLEET_BROKER_PORT: '0',
    FLEET_METRICS_PORT: '0',
    FLEET_PKI_HTTP_PORT: '0',
    FLEET_LISTEN_HOST: '127.0.0.1',
    // Every simulated device connects from 127.0.0.1; the per-address limit is for the real world.
    FLEET_BROKER_CONNECT_RATE: '1000000',
    FLEET_BROKER_CONNECT_BURST: '1000000',
    ...(where.databaseUrl ? { DATABASE_URL: where.databaseUrl } : {}),
  });
  const fleet = await startFleet(config, silentLogger());
  const admin = await createOperatorToken(fleet.db.pool, { name: 'bench', role: 'admin', actor: 'bench', now: new Date() });
  const hosted = { brokerPort: fleet.broker.port, close: () => fleet.close() };
  const reply: HostReply = {
    type: 'started',
    brokerPort: hosted.brokerPort,
    fleet: {
      apiUrl: `https://localhost:${fleet.api.port}`,
      rootPem: fleet.ca.rootPem,
      adminToken: admin.token,
      serverTls: secureContextOptions(fleet.ca),
    },
  };
  return { hosted, reply };
}

/** aedes as its README starts it, behind the TLS our broker uses: the chain is checked, nothing else. */
async function hostBareAedes(options: SecureContextOptions): Promise<{ hosted: Hosted; reply: HostReply }> {
  const aedes = await Aedes.createBroker();
  const server = tls.createServer({ ...options, requestCert: true, rejectUnauthorized: true }, (socket) => aedes.handle(socket));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const brokerPort = (server.address() as { port: number }).port;
  const close = async () => {
    const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
    await new Promise<void>((resolve) => aedes.close(() => resolve()));
    await stopped;
  };
  return { hosted: { brokerPort, close }, reply: { type: 'started', brokerPort } };
}

const microseconds = () => {
  const { user, system } = process.cpuUsage();
  return user + system;
};

/** The forced GC sits between the two CPU readings so the caller can leave its cost out. */
function snapshot(): Snapshot {
  const cpuBeforeGc = microseconds();
  (globalThis as { gc?: () => void }).gc?.();
  const cpuAfterGc = microseconds();
  return { cpuBeforeGc, cpuAfterGc, rss: process.memoryUsage.rss() };
}

function serve(): void {
  let hosted: Hosted | undefined;
  const send = (reply: HostReply) => process.send!(reply);
  const stop = async (code: number) => {
    await hosted?.close().catch(() => undefined);
    process.exit(code);
  };
  process.on('message', (request: HostRequest) => {
    const handle = async () => {
      switch (request.type) {
        case 'start-fleet':
        case 'start-aedes': {
          const started = request.type === 'start-fleet' ? await hostFleet(request) : await hostBareAedes(request.tls);
          hosted = started.hosted;
          return send(started.reply);
        }
        case 'snapshot':
          return send({ type: 'snapshot', snapshot: snapshot() });
        case 'stop':
          return stop(0);
      }
    };
    handle().catch((error: Error) => {
      send({ type: 'failed', message: error.message });
      void stop(1);
    });
  });
  // The benchmark went away or is stopping us: close the fleet (and its embedded database) first.
  process.on('disconnect', () => void stop(1));
  process.on('SIGTERM', () => void stop(1));
}

if (!process.send) {
  process.stderr.write('broker-host.js is started by broker.bench.js over IPC, not by hand\n');
  process.exit(2);
}
serve();
