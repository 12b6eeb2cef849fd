/**
 * fleet-auth's side of the benchmark, through its API as an operator and a factory would use it:
 * enrolling the devices before anything is measured, the enrollment bodies for the timed
 * enrollments, and revocation -> disconnect timed from the API request to the client's close.
 */
import https from 'node:https';
import { performance } from 'node:perf_hooks';
import mqtt, { type MqttClient } from 'mqtt';
import { mapLimited } from '../core/concurrency.js';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { percentile } from './figures.js';
import type { LoadDevice } from './load-generator.js';

const CLOSE_TIMEOUT_MS = 10_000;

export function apiClient(apiUrl: string, rootPem: string, adminToken: string) {
  // Kept alive, so a revocation's time is the revocation's and not a fresh TLS handshake's.
  const agent = new https.Agent({ keepAlive: true, maxSockets: 8, ca: rootPem });
  const post = (pathname: string, body: unknown): Promise<{ status: number; json: any }> =>
    new Promise((resolve, reject) => {
      const req = https.request(
        apiUrl + pathname,
        { method: 'POST', agent, headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' } },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            try {
              resolve({ status: res.statusCode ?? 0, json: JSON.parse(text) });
            } catch {
              reject(new Error(`POST ${pathname}: ${res.statusCode} and a body that is not JSON`));
            }
          });
        },
      );
      req.on('error', reject);
      req.end(JSON.stringify(body));
    });
  return { apiUrl, rootPem, post, close: () => agent.destroy() };
}

export type Api = ReturnType<typeof apiClient>;

/** Bulk registration: the enrollment token of each id. */
async function register(api: Api, ids: string[]): Promise<Map<string, string>> {
  const tokens = new Map<string, string>();
  for (let i = 0; i < ids.length; i += 10_000) {
    const res = await api.post('/v1/devices/bulk', { batch: 'bench', devices: ids.slice(i, i + 10_000).map((id) => ({ id })) });
    if (res.status !== 201) throw new Error(`bulk registration failed: ${res.status} ${JSON.stringify(res.json)}`);
    for (const device of res.json.devices as { id: string; enrollmentToken: string }[]) tokens.set(device.id, device.enrollmentToken);
  }
  return tokens;
}

/** Registration and batch enrollment: the factory path, and not part of any figure. */
export async function enrollDevices(api: Api, ids: string[]): Promise<LoadDevice[]> {
  const identities = await mapLimited(ids, 16, (id) => createDeviceIdentity(id));
  const tokens = await register(api, ids);
  const devices: LoadDevice[] = [];
  for (let i = 0; i < identities.length; i += 1000) {
    const chunk = identities.slice(i, i + 1000);
    const res = await api.post('/v1/enrollments/batch', { enrollments: chunk.map((d) => ({ token: tokens.get(d.deviceId), csr: d.csrPem })) });
    if (res.status !== 200 || res.json.failed !== 0) throw new Error(`batch enrollment failed: ${res.status} ${JSON.stringify(res.json).slice(0, 500)}`);
    res.json.results.forEach((result: { certificate: { certificate: string } }, j: number) => {
      devices.push({ id: chunk[j]!.deviceId, keyPem: chunk[j]!.keyPem, certificatePem: result.certificate.certificate });
    });
  }
  return devices;
}

/** Registered devices' single-enrollment request bodies (token and CSR), made before any clock starts. */
export async function enrollmentBodies(api: Api, ids: string[]): Promise<string[]> {
  const tokens = await register(api, ids);
  return mapLimited(ids, 16, async (id) => JSON.stringify({ token: tokens.get(id), csr: (await createDeviceIdentity(id)).csrPem }));
}

/** One MQTT.js device over mutual TLS; resolves on CONNACK, fails if the connection ends first. */
function connectDevice(port: number, rootPem: string, device: LoadDevice): Promise<MqttClient> {
  const client = mqtt.connect({
    protocol: 'mqtts',
    host: '127.0.0.1',
    servername: 'localhost',
    port,
    clientId: device.id,
    ca: rootPem,
    cert: device.certificatePem,
    key: device.keyPem,
    reconnectPeriod: 0,
    connectTimeout: CLOSE_TIMEOUT_MS,
    protocolVersion: 4,
  });
  let lastError: Error | undefined;
  client.on('error', (error) => (lastError = error));
  return new Promise((resolve, reject) => {
    client.once('connect', () => resolve(client));
    client.once('close', () => reject(new Error(`${device.id} was refused before CONNACK${lastError ? `: ${lastError.message}` : ''}`)));
  });
}

function closeSeen(client: MqttClient, id: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${id} was still connected ${CLOSE_TIMEOUT_MS} ms after its revocation`)), CLOSE_TIMEOUT_MS);
    client.once('close', () => {
      clearTimeout(timer);
      resolve(performance.now());
    });
  });
}

export interface RevocationFigures {
  count: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
  apiRoundTripP50: number;
}

/**
 * Connects `devices` (beside whatever else the brokers hold), device i to ports[i % ports.length]
 * (one port per node), then revokes each through `api`, `concurrency` at a time, timing from just
 * before the request until the client sees its close.
 */
export async function measureRevocations(api: Api, ports: number[], devices: LoadDevice[], concurrency: number): Promise<RevocationFigures> {
  const clients = await mapLimited(devices, 16, (device, i) => connectDevice(ports[i % ports.length]!, api.rootPem, device));
  try {
    const timings = await mapLimited(devices, concurrency, async (device, i) => {
      const closedAt = closeSeen(clients[i]!, device.id);
      const sent = performance.now();
      const res = await api.post(`/v1/devices/${device.id}/revoke`, { reason: 'keyCompromise' });
      const answered = performance.now();
      if (res.status !== 200) throw new Error(`revoking ${device.id} failed: ${res.status} ${JSON.stringify(res.json)}`);
      return { toClose: (await closedAt) - sent, roundTrip: answered - sent };
    });
    const toClose = timings.map((t) => t.toClose).sort((a, b) => a - b);
    const roundTrips = timings.map((t) => t.roundTrip).sort((a, b) => a - b);
    return {
      count: toClose.length,
      p50: percentile(toClose, 50),
      p95: percentile(toClose, 95),
      p99: percentile(toClose, 99),
      max: toClose.at(-1)!,
      apiRoundTripP50: percentile(roundTrips, 50),
    };
  } finally {
    for (const client of clients) client.end(true);
  }
}
