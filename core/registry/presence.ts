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
 * connection. Rows are only moved forward in time, so a late flush never undoes a newer one. Each
 * connected row names the broker node holding the session ($6); a node's offline write leaves a
 * device alone that is connected through another node (it moved there, and this node's session is
 * the one that ended).
 */
const RECORD_PRESENCE = `
  UPDATE devices d SET
    connected = u.connected,
    connected_since = CASE WHEN u.connected THEN u.at ELSE NULL END,
    last_seen_at = u.at,
    peer_address = coalesce(u.peer, d.peer_address),
    connected_serial = CASE WHEN u.connected THEN u.serial ELSE NULL END,
    connected_node = CASE WHEN u.connected THEN $6 ELSE NULL END
  FROM unnest($1::text[], $2::boolean[], $3::timestamptz[], $4::text[], $5::text[]) AS u (id, connected, at, peer, serial)
  WHERE d.id = u.id AND (d.last_seen_at IS NULL OR d.last_seen_at <= u.at)
    AND (u.connected OR NOT d.connected OR d.connected_node IS NOT DISTINCT FROM $6)`;

export async function recordPresence(q: Queryable, nodeId: string, updates: PresenceUpdate[]): Promise<void> {
  if (updates.length === 0) return;
  await q.query(RECORD_PRESENCE, [
    updates.map((u) => u.deviceId),
    updates.map((u) => u.connected),
    updates.map((u) => u.at),
    updates.map((u) => u.peerAddress),
    updates.map((u) => u.serial),
    nodeId,
  ]);
}

const FORGET_NODE_CONNECTIONS = `
  UPDATE devices SET connected = false, connected_since = NULL, connected_serial = NULL, connected_node = NULL
  WHERE connected AND connected_node = $1`;

/**
 * A node starting has no sessions yet: whatever the registry shows connected through its id was left
 * over by its own earlier run, stopped without writing its last presence (killed, or its database
 * went first). Other nodes' devices are theirs; a dead node's are cleared when its lease expires.
 */
export async function forgetNodeConnections(q: Queryable, nodeId: string): Promise<number> {
  return (await q.query(FORGET_NODE_CONNECTIONS, [nodeId])).rowCount ?? 0;
}

const DISCONNECT_NODE = `
  UPDATE devices SET connected = false, connected_since = NULL, connected_serial = NULL, connected_node = NULL, last_seen_at = $2
  WHERE connected AND connected_node = $1`;

/**
 * A node stopping has closed every session: each device it showed connected was last seen now.
 * Written as one statement at shutdown, so it does not depend on each socket's close being
 * observed before the database stops.
 */
export async function recordNodeDisconnected(q: Queryable, nodeId: string, at: Date): Promise<number> {
  return (await q.query(DISCONNECT_NODE, [nodeId, at])).rowCount ?? 0;
}
