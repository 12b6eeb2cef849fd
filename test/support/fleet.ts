import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { createDeviceIdentity, type DeviceIdentity } from '../../device-sim/identity.js';
import { loadConfig, type FleetConfig } from '../../core/config.js';
import { ensureDataDir } from '../../core/db/database.js';
import { openEmbeddedDatabase } from '../../core/db/embedded.js';
import { type FleetHooks, type RunningFleet, startFleet } from '../../cli/start.js';
import { type Logger, silentLogger } from '../../core/log.js';
import { createOperatorToken } from '../../core/registry/index.js';
import { httpsRequest, type HttpResult } from './http.js';
import type { ManualTime } from './time.js';

/**
 * A database of the test's own: on DATABASE_URL's server a fresh database created now and dropped at
 * the end; without DATABASE_URL the embedded PostgreSQL in the test's data directory.
 */
export async function testDatabase(): Promise<{ url: string | undefined; drop(): Promise<void> }> {
  const server = process.env.DATABASE_URL;
  if (!server) return { url: undefined, drop: async () => {} };
  const name = `fleet_test_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: server });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const url = new URL(server);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    async drop() {
      const c = new pg.Client({ connectionString: server });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await c.end();
    },
  };
}

/** A database for tests that need only a connection: the server's (fresh) or an embedded one in `dir`. */
export async function scratchDatabase(dir: string): Promise<{ url: string; close(): Promise<void> }> {
  const database = await testDatabase();
  if (database.url) return { url: database.url, close: database.drop };
  await ensureDataDir(dir);
  const embedded = await openEmbeddedDatabase(dir, silentLogger());
  return { url: embedded.url, close: embedded.stop };
}

export interface EnrolledDevice {
  identity: DeviceIdentity;
  certificatePem: string;
  chainPem: string;
  serial: string;
}

export interface TestFleet {
  fleet: RunningFleet;
  config: FleetConfig;
  dataDir: string;
  adminToken: string;
  rootPem: string;
  apiUrl: string;
  api(
    method: string,
    pathname: string,
    options?: { token?: string; json?: unknown; body?: string | Buffer; headers?: Record<string, string>; tls?: { cert: string; key: string } },
  ): Promise<HttpResult>;
  register(deviceId: string): Promise<string>;
  /** Writes a file under the test's data directory (for openssl and curl) and returns its path. */
  file(name: string, content: string | Buffer): Promise<string>;
  enroll(deviceId: string): Promise<EnrolledDevice>;
  /** Registers a backend service identity with a policy role (fleet-reader, fleet-commander…) and enrolls it. */
  enrollService(serviceId: string, role: string): Promise<EnrolledDevice>;
  /** Stops the fleet, runs `between` (say, CLI work on the stopped data directory), and starts it again on the same data and database. */
  restart(between?: () => Promise<void>): Promise<void>;
  close(): Promise<void>;
}

export async function startTestFleet(
  options: {
    env?: Record<string, string>;
    clock?: () => Date;
    /** Time the test moves by hand: the fleet's clock and its deadline scheduler both run on it. */
    time?: ManualTime;
    log?: Logger;
    databaseUrl?: string;
    /** What the fleet leaves to its caller beside the configuration (when the change feed reconnects). */
    hooks?: FleetHooks;
  } = {},
): Promise<TestFleet> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'fleet-test-'));
  const database = options.databaseUrl ? { url: options.databaseUrl, drop: async () => {} } : await testDatabase();
  const config = loadConfig({
    FLEET_DATA_DIR: dataDir,
    FLEET_API_PORT: '0',
    FLEET_BROKER_PORT: '0',
    FLEET_METRICS_PORT: '0',
    FLEET_PKI_HTTP_PORT: '0',
    FLEET_LISTEN_HOST: '127.0.0.1',
    ...(database.url ? { DATABASE_URL: database.url } : {}),
    // Tests send many requests, many of them refused on purpose, from one address; the tests of
    // throttling itself set these low.
    FLEET_API_RATE: '1000000',
    FLEET_API_BURST: '1000000',
    FLEET_API_CREDENTIAL_RATE: '1000000',
    FLEET_API_CREDENTIAL_BURST: '1000000',
    FLEET_API_AUTH_FAILURES: '1000000',
    ...options.env,
  });
  // A restart below keeps the same time and hooks, so deadlines and admission go on from where they were.
  const clock = options.time?.clock ?? options.clock;
  const scheduler = options.time?.scheduler;
  const start = () => startFleet(config, options.log ?? silentLogger(), clock, scheduler, options.hooks);
  let fleet = await start();
  const admin = await createOperatorToken(fleet.db.pool, { name: 'test', role: 'admin', actor: 'test', now: new Date() });
  const rootPem = fleet.ca.rootPem;
  let apiUrl = `https://localhost:${fleet.api.port}`;

  const api: TestFleet['api'] = (method, pathname, o = {}) => {
    const headers: Record<string, string> = { ...o.headers };
    if (o.token) headers.authorization = `Bearer ${o.token}`;
    let body = o.body;
    if (o.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(o.json);
    }
    return httpsRequest(apiUrl + pathname, { method, headers, body, ca: rootPem, ...o.tls });
  };

  const register = async (deviceId: string) => {
    const res = await api('POST', '/v1/devices', { token: admin.token, json: { id: deviceId } });
    if (res.status !== 201) throw new Error(`registering ${deviceId} failed: ${res.status} ${res.text}`);
    return res.json.enrollmentToken as string;
  };

  const enrollWithToken = async (deviceId: string, token: string): Promise<EnrolledDevice> => {
    const identity = await createDeviceIdentity(deviceId);
    const res = await api('POST', '/v1/enrollments', { json: { token, csr: identity.csrPem } });
    if (res.status !== 201) throw new Error(`enrolling ${deviceId} failed: ${res.status} ${res.text}`);
    return { identity, certificatePem: res.json.certificate, chainPem: res.json.chain, serial: res.json.serial };
  };
  const enroll = async (deviceId: string) => enrollWithToken(deviceId, await register(deviceId));
  const enrollService = async (serviceId: string, role: string) => {
    const res = await api('POST', '/v1/services', { token: admin.token, json: { id: serviceId, role } });
    if (res.status !== 201) throw new Error(`registering service ${serviceId} failed: ${res.status} ${res.text}`);
    return enrollWithToken(serviceId, res.json.enrollmentToken);
  };

  let files = 0;
  const file = async (name: string, content: string | Buffer) => {
    const p = path.join(dataDir, `${++files}-${name}`);
    await writeFile(p, content);
    return p;
  };

  const testFleet: TestFleet = {
    fleet,
    config,
    file,
    dataDir,
    adminToken: admin.token,
    rootPem,
    apiUrl,
    api,
    register,
    enroll,
    enrollService,
    async restart(between) {
      await fleet.close();
      await between?.();
      fleet = testFleet.fleet = await start();
      testFleet.apiUrl = apiUrl = `https://localhost:${fleet.api.port}`;
    },
    async close() {
      await fleet.close();
      await database.drop();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
  return testFleet;
}
