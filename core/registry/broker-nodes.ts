import type { Queryable } from '../db/transaction.js';

/**
 * Broker nodes and their leases. A node holds a lease while it runs and renews it well before it
 * expires; the presence it wrote (devices.connected_node) is believed only while the lease holds.
 */

const CLAIM_NODE = `
  INSERT INTO broker_nodes (id, started_at, lease_expires_at) VALUES ($1, $2, $3)
  ON CONFLICT (id) DO UPDATE SET started_at = excluded.started_at, lease_expires_at = excluded.lease_expires_at`;

/** A node starting takes its lease, whether or not an earlier run under the same id left one. */
export async function claimBrokerNode(q: Queryable, nodeId: string, now: Date, leaseMs: number): Promise<void> {
  await q.query(CLAIM_NODE, [nodeId, now, new Date(now.getTime() + leaseMs)]);
}

/** `inserted` is true when no row was there: the lease had expired and another node swept it. */
const RENEW_NODE = `
  INSERT INTO broker_nodes (id, started_at, lease_expires_at) VALUES ($1, $2, $3)
  ON CONFLICT (id) DO UPDATE SET lease_expires_at = excluded.lease_expires_at
  RETURNING (xmax = 0) AS inserted`;

/**
 * Moves the node's lease on. 'lost' means the lease had lapsed and the node's presence was cleared
 * meanwhile (the node stalled longer than a lease): the lease is taken again, and the node must
 * write the presence of its live sessions again.
 */
export async function renewBrokerNode(q: Queryable, nodeId: string, now: Date, leaseMs: number): Promise<'renewed' | 'lost'> {
  const { rows } = await q.query(RENEW_NODE, [nodeId, now, new Date(now.getTime() + leaseMs)]);
  return rows[0]?.inserted ? 'lost' : 'renewed';
}

/**
 * One statement, so two nodes sweeping at once cannot both count a node: the lease row is deleted
 * once, and a device row already cleared by the other is no longer connected. A connected row whose
 * node holds no lease at all (written before leases, or by a node whose lease was swept while its
 * write was in flight) is cleared too.
 */
const SWEEP_EXPIRED = `
  WITH expired AS (
    DELETE FROM broker_nodes WHERE lease_expires_at < $1 RETURNING id
  ), cleared AS (
    UPDATE devices d SET connected = false, connected_since = NULL, connected_serial = NULL, connected_node = NULL
    WHERE d.connected AND (
      d.connected_node IN (SELECT id FROM expired)
      OR NOT EXISTS (SELECT 1 FROM broker_nodes n WHERE n.id = d.connected_node))
    RETURNING 1
  )
  SELECT coalesce((SELECT array_agg(id ORDER BY id) FROM expired), '{}') AS nodes, (SELECT count(*) FROM cleared)::int AS devices`;

/** Drops the leases expired by `now` and clears the presence those nodes left; says what it cleared. */
export async function sweepExpiredBrokerNodes(q: Queryable, now: Date): Promise<{ nodes: string[]; devices: number }> {
  const { rows } = await q.query(SWEEP_EXPIRED, [now]);
  return { nodes: rows[0].nodes as string[], devices: rows[0].devices as number };
}

const RELEASE_NODE = `DELETE FROM broker_nodes WHERE id = $1`;

/** A node stopping cleanly, after clearing its own presence, gives up its lease. */
export async function releaseBrokerNode(q: Queryable, nodeId: string): Promise<void> {
  await q.query(RELEASE_NODE, [nodeId]);
}
