import type { Queryable } from '../db/transaction.js';

export const CHANGES_CHANNEL = 'fleet_registry_changes';

export type ChangeKind = 'device_revoked' | 'device_suspended' | 'device_resumed' | 'certificate_revoked' | 'certificate_superseded';

export interface RegistryChange {
  seq: number;
  kind: ChangeKind;
  deviceId: string;
  serial: string | null;
}

/**
 * One statement for any number of rows. Each row's number comes from next_registry_change_seq()
 * (sql/004), which holds a lock until the transaction ends, so numbers become visible in order.
 */
const INSERT_CHANGES = `
  INSERT INTO registry_changes (at, kind, device_id, certificate_serial)
  SELECT $1, $2, device_id, serial FROM unnest($3::text[], $4::text[]) AS c (device_id, serial)`;

const SELECT_CHANGES_SINCE = `
  SELECT seq, kind, device_id, certificate_serial FROM registry_changes WHERE seq > $1 ORDER BY seq LIMIT $2`;

const SELECT_LATEST = `SELECT coalesce(max(seq), 0) AS seq FROM registry_changes`;

const SELECT_CHANGE_EXISTS = `SELECT 1 FROM registry_changes WHERE seq = $1`;

/**
 * Records that access changed for these devices (or their certificates), inside the transaction that
 * changed it: the broker hears of it when it commits, or after a lost connection from the table.
 * Call it last in the transaction, after every row lock is taken: from here until commit, other
 * transactions recording changes wait for this one.
 */
export async function recordChange(
  q: Queryable,
  change: { kind: ChangeKind; at: Date; targets: { deviceId: string; serial?: string | null }[] },
): Promise<void> {
  if (change.targets.length === 0) return;
  await q.query(INSERT_CHANGES, [
    change.at,
    change.kind,
    change.targets.map((t) => t.deviceId),
    change.targets.map((t) => t.serial ?? null),
  ]);
}

export async function changesSince(q: Queryable, seq: number, limit = 1000): Promise<RegistryChange[]> {
  const { rows } = await q.query(SELECT_CHANGES_SINCE, [seq, limit]);
  return rows.map((r) => ({ seq: Number(r.seq), kind: r.kind, deviceId: r.device_id, serial: r.certificate_serial }));
}

export async function latestChangeSeq(q: Queryable): Promise<number> {
  const { rows } = await q.query(SELECT_LATEST);
  return Number(rows[0].seq);
}

/** Whether change `seq` is still in the table: a follower that saw it can then replay what came after. */
export async function changeIsKept(q: Queryable, seq: number): Promise<boolean> {
  return seq === 0 || ((await q.query(SELECT_CHANGE_EXISTS, [seq])).rowCount ?? 0) > 0;
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

/** What happened to the issuing CAs: a rotation or import adds one that signs from now on; a retirement ends one. */
export interface CaChange {
  action: 'rotated' | 'imported' | 'retired';
  /** The issuing CA's generation number. */
  generation: number;
  /** Its subject, when known. */
  issuer?: string;
  at: Date;
}

/**
 * The device event (kind ca_changed) and the notification in one statement, so operators see every
 * change the servers act on, and nothing they did not.
 */
const ANNOUNCE_CA_CHANGE = `
  WITH recorded AS (
    INSERT INTO device_events (at, kind, reason, details) VALUES ($1, 'ca_changed', $2, $3) RETURNING id
  )
  SELECT pg_notify($4, 'issuers') FROM recorded`;

export async function announceCaChange(q: Queryable, change: CaChange): Promise<void> {
  const details = { generation: change.generation, ...(change.issuer === undefined ? {} : { issuer: change.issuer }) };
  await q.query(ANNOUNCE_CA_CHANGE, [change.at, change.action, details, CA_CHANNEL]);
}
