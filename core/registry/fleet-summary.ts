import type pg from 'pg';
import type { DeviceStatus, IdentityKind } from './devices.js';

export interface FleetSummary {
  at: Date;
  devices: { byStatus: Record<DeviceStatus, number>; byKind: Record<IdentityKind, number>; online: number };
  /** Active certificates that end within 7 and within 30 days of `at` (not those already ended). */
  certificates: { expiringWithin7Days: number; expiringWithin30Days: number };
  refusalsLastHour: Record<string, number>;
  /** Since 00:00 UTC of `at`'s day. */
  today: { enrollments: number; renewals: number; revocations: number };
}

const DAY_MS = 86_400_000;
const HOUR_MS = 3_600_000;

// Status and kind come from device_counts (kept by triggers on devices, sql/009); the rest read an
// index only: online the partial index of connected devices, expiry (status, not_after), events
// (kind, at).
const COUNT_BY_STATUS_AND_KIND = `SELECT status, kind, sum(delta)::int AS n, count(*)::int AS rows FROM device_counts GROUP BY status, kind`;
/** Enough delta rows to be worth folding; a handful of statements' worth, so reads stay short. */
const FOLD_AFTER_ROWS = 200;
/**
 * One statement: it deletes the rows its snapshot sees and writes back their sum. Rows committed
 * meanwhile are not deleted, and two folds at once each delete rows the other did not, so no
 * change is lost or counted twice.
 */
const FOLD_COUNTS = `
  WITH folded AS (DELETE FROM device_counts RETURNING status, kind, delta)
  INSERT INTO device_counts (status, kind, delta) SELECT status, kind, sum(delta) FROM folded GROUP BY status, kind`;
const COUNT_ONLINE = `SELECT count(*)::int AS n FROM devices WHERE connected`;
const COUNT_EXPIRING = `
  SELECT count(*) FILTER (WHERE not_after <= $2)::int AS within7, count(*)::int AS within30
  FROM certificates WHERE status = 'active' AND not_after > $1 AND not_after <= $3`;
const COUNT_EVENTS_SINCE = `
  SELECT kind, reason, count(*)::int AS n FROM device_events
  WHERE kind = ANY($1::text[]) AND at >= $2 AND at <= $3 GROUP BY kind, reason`;

/** The fleet at a glance. The counts run side by side on the pool's connections. */
export async function fleetSummary(pool: pg.Pool, at: Date): Promise<FleetSummary> {
  const midnight = new Date(Math.floor(at.getTime() / DAY_MS) * DAY_MS);
  const [counts, online, expiring, refusals, today] = await Promise.all([
    pool.query(COUNT_BY_STATUS_AND_KIND),
    pool.query(COUNT_ONLINE),
    pool.query(COUNT_EXPIRING, [at, new Date(at.getTime() + 7 * DAY_MS), new Date(at.getTime() + 30 * DAY_MS)]),
    pool.query(COUNT_EVENTS_SINCE, [['refused'], new Date(at.getTime() - HOUR_MS), at]),
    pool.query(COUNT_EVENTS_SINCE, [['enrolled', 'renewed', 'revoked'], midnight, at]),
  ]);
  const statuses: Record<DeviceStatus, number> = { pending: 0, active: 0, suspended: 0, revoked: 0 };
  const kinds: Record<IdentityKind, number> = { device: 0, service: 0 };
  for (const r of counts.rows) {
    statuses[r.status as DeviceStatus] += r.n;
    kinds[r.kind as IdentityKind] += r.n;
  }
  if (counts.rows.reduce((sum, r) => sum + r.rows, 0) > FOLD_AFTER_ROWS) await pool.query(FOLD_COUNTS);
  const refusalsLastHour: Record<string, number> = {};
  for (const r of refusals.rows) refusalsLastHour[r.reason ?? 'unknown'] = (refusalsLastHour[r.reason ?? 'unknown'] ?? 0) + r.n;
  const todayOf = (kind: string) => today.rows.filter((r) => r.kind === kind).reduce((sum, r) => sum + r.n, 0);
  return {
    at,
    devices: { byStatus: statuses, byKind: kinds, online: online.rows[0].n },
    certificates: { expiringWithin7Days: expiring.rows[0].within7, expiringWithin30Days: expiring.rows[0].within30 },
    refusalsLastHour,
    today: { enrollments: todayOf('enrolled'), renewals: todayOf('renewed'), revocations: todayOf('revoked') },
  };
}
