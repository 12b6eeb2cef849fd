import type { Queryable } from '../db/transaction.js';

/** The latest presence of one identity, as the broker saw it. */
export interface PresenceUpdate {
  deviceId: string;
  connected: boolean;
  at: Date;
  peerAddress: string | null;
  /** The certificate the session presented; cleared when the device goes offline. */
  serial: string | null;
}

/**
 * One statement for many identities, so a reconnect storm costs one write per flush, not one per
 * connection. Rows are only moved forward in time, so a late flush never undoes a newer one.
 */
const RECORD_PRESENCE = `
  UPDATE devices d SET
    connected = u.connected,
    connected_since = CASE WHEN u.connected THEN u.at ELSE NULL END,
    last_seen_at = u.at,
    peer_address = coalesce(u.peer, d.peer_address),
    connected_serial = CASE WHEN u.connected THEN u.serial ELSE NULL END
  FROM unnest($1::text[], $2::boolean[], $3::timestamptz[], $4::text[], $5::text[]) AS u (id, connected, at, peer, serial)
  WHERE d.id = u.id AND (d.last_seen_at IS NULL OR d.last_seen_at <= u.at)`;

export async function recordPresence(q: Queryable, updates: PresenceUpdate[]): Promise<void> {
  if (updates.length === 0) return;
  await q.query(RECORD_PRESENCE, [
    updates.map((u) => u.deviceId),
    updates.map((u) => u.connected),
    updates.map((u) => u.at),
    updates.map((u) => u.peerAddress),
    updates.map((u) => u.serial),
  ]);
}

const FORGET_CONNECTIONS = `UPDATE devices SET connected = false, connected_since = NULL, connected_serial = NULL WHERE connected`;

/**
 * A broker starting has no sessions yet: whatever the registry says is connected was left over by a
 * process that stopped without writing its last presence (killed, or its database went first).
 */
export async function forgetConnections(q: Queryable): Promise<number> {
  return (await q.query(FORGET_CONNECTIONS)).rowCount ?? 0;
}

const DISCONNECT_ALL = `UPDATE devices SET connected = false, connected_since = NULL, connected_serial = NULL, last_seen_at = $1 WHERE connected`;

/**
 * A broker stopping has closed every session: each device it showed connected was last seen now.
 * Written as one statement at shutdown, so it does not depend on each socket's close being
 * observed before the database stops.
 */
export async function recordAllDisconnected(q: Queryable, at: Date): Promise<number> {
  return (await q.query(DISCONNECT_ALL, [at])).rowCount ?? 0;
}
