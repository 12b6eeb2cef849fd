import type { Queryable } from '../db/transaction.js';

const MARK_SEEN = `UPDATE devices SET last_seen_at = $2 WHERE id = ANY($1::text[]) AND (last_seen_at IS NULL OR last_seen_at < $2)`;

/** One statement for many devices, so a reconnect storm costs one write per flush, not per device. */
export async function markDevicesSeen(q: Queryable, deviceIds: string[], at: Date): Promise<void> {
  if (deviceIds.length === 0) return;
  await q.query(MARK_SEEN, [deviceIds, at]);
}
