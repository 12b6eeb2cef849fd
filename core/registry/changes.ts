import type { Queryable } from '../db/transaction.js';

export const CHANGES_CHANNEL = 'fleet_registry_changes';

export interface RegistryChange {
  seq: number;
  kind: 'device_revoked' | 'device_suspended' | 'device_resumed' | 'certificate_revoked' | 'certificate_superseded';
  deviceId: string;
  serial: string | null;
}

const SELECT_CHANGES_SINCE = `
  SELECT seq, kind, device_id, certificate_serial FROM registry_changes WHERE seq > $1 ORDER BY seq LIMIT $2`;

const SELECT_LATEST = `SELECT coalesce(max(seq), 0) AS seq FROM registry_changes`;

export async function changesSince(q: Queryable, seq: number, limit = 1000): Promise<RegistryChange[]> {
  const { rows } = await q.query(SELECT_CHANGES_SINCE, [seq, limit]);
  return rows.map((r) => ({ seq: Number(r.seq), kind: r.kind, deviceId: r.device_id, serial: r.certificate_serial }));
}

export async function latestChangeSeq(q: Queryable): Promise<number> {
  const { rows } = await q.query(SELECT_LATEST);
  return Number(rows[0].seq);
}

/** Parses a NOTIFY payload written by the registry_changes trigger; undefined for anything else. */
export function parseChange(payload: string | undefined): RegistryChange | undefined {
  try {
    const c = JSON.parse(payload ?? '');
    if (typeof c.seq !== 'number' || typeof c.deviceId !== 'string' || typeof c.kind !== 'string') return undefined;
    return { seq: c.seq, kind: c.kind, deviceId: c.deviceId, serial: c.serial ?? null };
  } catch {
    return undefined;
  }
}

/** Told when the CA's set of issuing CAs changes (a rotation), so every process reloads it. */
export const CA_CHANNEL = 'fleet_ca_changes';

export async function announceCaChange(q: Queryable): Promise<void> {
  await q.query('SELECT pg_notify($1, $2)', [CA_CHANNEL, 'issuers']);
}
