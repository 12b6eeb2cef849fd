import type pg from 'pg';
import type { Logger } from '../core/log.js';
import { claimBrokerNode, forgetNodeConnections, releaseBrokerNode, renewBrokerNode, sweepExpiredBrokerNodes } from '../core/registry/index.js';
import { repeatEvery, type Scheduler } from '../core/scheduler.js';

export interface NodeLeaseOptions {
  pool: pg.Pool;
  /** This node's id (FLEET_NODE_ID): a machine's broker, or one of its worker processes. */
  nodeId: string;
  /** How long the node's presence is believed without a renewal (FLEET_PRESENCE_LEASE). */
  leaseMs: number;
  scheduler: Scheduler;
  clock: () => Date;
  log: Logger;
  /** The lease had lapsed and another node cleared this node's devices: write their presence again (returns how many). */
  onLost: () => number;
}

export interface NodeLease {
  /** Stops renewing; the lease then expires on its own, and another node clears what is left. */
  stop(): void;
  /** At a clean shutdown, once this node's presence is cleared: gives the lease up at once. */
  release(): Promise<void>;
}

/**
 * Presence per broker node. At start the node takes its lease and clears what its own earlier run
 * left (the same id is the same node); then, three times a lease, it renews the lease and clears
 * the presence of nodes whose lease has expired: they died without clearing their own.
 */
export async function holdNodeLease(o: NodeLeaseOptions): Promise<NodeLease> {
  const { pool, nodeId, leaseMs, log } = o;
  await claimBrokerNode(pool, nodeId, o.clock(), leaseMs);
  const stale = await forgetNodeConnections(pool, nodeId);
  if (stale > 0) log.info({ devices: stale, node: nodeId }, 'cleared presence left over from an earlier run of this node');

  const renewal = repeatEvery(o.scheduler, Math.max(1, Math.floor(leaseMs / 3)), async () => {
    try {
      if ((await renewBrokerNode(pool, nodeId, o.clock(), leaseMs)) === 'lost') {
        const devices = o.onLost();
        log.warn({ node: nodeId, devices }, "this node's presence lease had expired and another node cleared its devices; writing their presence again");
      }
    } catch (error) {
      // Not sweeping either: a node that cannot renew may be the one whose lease is running out.
      return log.warn({ err: error, node: nodeId }, 'could not renew the presence lease; trying again shortly');
    }
    try {
      const swept = await sweepExpiredBrokerNodes(pool, o.clock());
      if (swept.nodes.length > 0 || swept.devices > 0) {
        log.info({ nodes: swept.nodes, devices: swept.devices }, 'cleared the presence of broker nodes whose lease expired (FLEET_PRESENCE_LEASE)');
      }
    } catch (error) {
      log.warn({ err: error }, 'could not clear the presence of expired broker nodes; trying again shortly');
    }
  });

  return {
    stop: () => renewal.stop(),
    async release() {
      renewal.stop();
      await releaseBrokerNode(pool, nodeId);
    },
  };
}
