import type { FleetApi } from './api.js';
import { createDeviceIdentity, type DeviceIdentity } from './identity.js';
import { checkStateKnownToBackend } from './known.js';
import { loadIdentity, saveIdentity, type StoredIdentity } from './state.js';
import { mapLimited } from '../core/concurrency.js';

/** The API's own limits: bulk registration takes 10,000 rows, batch enrollment 1,000. */
const BULK_CHUNK = 10_000;
const ENROLL_CHUNK = 1000;
/** Key generation runs on the event loop's thread pool; a few at once keep it busy without a backlog. */
const KEYGEN_CONCURRENCY = 16;

export interface PlannedDevice {
  id: string;
  profile: string;
}

export interface FactoryResult {
  /** Devices ready to run: enrolled now or reused from the state directory. */
  ready: StoredIdentity[];
  enrolled: number;
  reused: number;
  /** Devices the state directory holds but that cannot run: they are reported, not silently enrolled again. */
  expired: string[];
  revoked: string[];
  failures: Record<string, number>;
}


/**
 * The factory line: reuse every device the state directory knows; for the others, each device makes
 * its own key and CSR, the factory registers them in bulk and enrolls them in batches with their tokens.
 */
export async function provisionFleet(
  api: FleetApi,
  stateDir: string,
  planned: PlannedDevice[],
  options: {
    lifetime?: string;
    batch?: string;
    onEnrolling?: (count: number) => void;
    /** Called as keys are made and as batches are enrolled, for a progress line. */
    onProgress?: (step: 'keys' | 'enrolled', done: number, total: number) => void;
    now?: () => number;
  },
): Promise<FactoryResult> {
  const now = options.now ?? Date.now;
  const result: FactoryResult = { ready: [], enrolled: 0, reused: 0, expired: [], revoked: [], failures: {} };
  const stored = await mapLimited(planned, 64, (device) => loadIdentity(stateDir, device.id));
  const missing: PlannedDevice[] = [];
  planned.forEach((device, i) => {
    const identity = stored[i];
    if (!identity) return void missing.push(device);
    if (identity.revoked) result.revoked.push(device.id);
    else if (Date.parse(identity.notAfter) <= now()) result.expired.push(device.id);
    else {
      result.ready.push(identity);
      result.reused++;
    }
  });
  await checkStateKnownToBackend(api, stateDir, result.ready);
  if (missing.length === 0) return result;
  options.onEnrolling?.(missing.length);

  let keys = 0;
  const identities = await mapLimited(missing, KEYGEN_CONCURRENCY, async (device) => {
    const identity = await createDeviceIdentity(device.id);
    if (++keys % 500 === 0 || keys === missing.length) options.onProgress?.('keys', keys, missing.length);
    return identity;
  });
  const tokens = await registerInBulk(api, missing, options.batch);
  for (let i = 0; i < missing.length; i += ENROLL_CHUNK) {
    const devices = missing.slice(i, i + ENROLL_CHUNK);
    const csrs = identities.slice(i, i + ENROLL_CHUNK);
    await enrollChunk(api, stateDir, devices, csrs, tokens, options.lifetime, result, now);
    options.onProgress?.('enrolled', Math.min(missing.length, i + ENROLL_CHUNK), missing.length);
  }
  return result;
}

async function registerInBulk(api: FleetApi, devices: PlannedDevice[], batch: string | undefined): Promise<Map<string, string>> {
  const tokens = new Map<string, string>();
  for (let i = 0; i < devices.length; i += BULK_CHUNK) {
    const rows = devices.slice(i, i + BULK_CHUNK).map((d) => ({ id: d.id, profile: d.profile }));
    const res = await api.operator('POST', '/v1/devices/bulk', { ...(batch ? { batch } : {}), devices: rows });
    if (res.status !== 201) {
      throw new Error(`bulk registration refused (${res.status} ${res.json?.code ?? ''}): ${res.json?.detail ?? JSON.stringify(res.json).slice(0, 300)}` +
        (res.json?.code === 'bulk_rows_invalid' || res.json?.code === 'device_exists'
          ? ' (devices already registered but missing from the state directory? use another --state or --prefix)'
          : ''));
    }
    for (const row of res.json.devices as { id?: string; device?: { id: string }; enrollmentToken: string }[]) {
      tokens.set(row.device?.id ?? row.id!, row.enrollmentToken);
    }
  }
  return tokens;
}

async function enrollChunk(
  api: FleetApi,
  stateDir: string,
  devices: PlannedDevice[],
  identities: DeviceIdentity[],
  tokens: Map<string, string>,
  lifetime: string | undefined,
  result: FactoryResult,
  now: () => number,
): Promise<void> {
  const enrollments = identities.map((d) => ({ token: tokens.get(d.deviceId), csr: d.csrPem, ...(lifetime ? { lifetime } : {}) }));
  const res = await api.anonymous('POST', '/v1/enrollments/batch', { enrollments });
  if (res.status !== 200) throw new Error(`batch enrollment refused (${res.status}): ${JSON.stringify(res.json).slice(0, 300)}`);
  const saved: Promise<void>[] = [];
  for (const item of res.json.results as { index: number; status: number; certificate?: any; problem?: any }[]) {
    const device = devices[item.index]!;
    if (!item.certificate) {
      const reason = `enroll_${item.problem?.code ?? item.status}`;
      result.failures[reason] = (result.failures[reason] ?? 0) + 1;
      continue;
    }
    const identity: StoredIdentity = {
      id: device.id,
      profile: device.profile,
      keyPem: identities[item.index]!.keyPem,
      certificatePem: item.certificate.certificate,
      chainPem: item.certificate.chain,
      serial: item.certificate.serial,
      notAfter: item.certificate.notAfter,
      issuedAt: new Date(now()).toISOString(),
    };
    saved.push(saveIdentity(stateDir, identity));
    result.ready.push(identity);
    result.enrolled++;
  }
  await Promise.all(saved);
}
