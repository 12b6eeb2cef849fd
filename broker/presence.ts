import type { Aedes } from 'aedes';
import type pg from 'pg';
import type { Logger } from '../core/log.js';
import { type PresenceUpdate, recordNodeDisconnected, recordPresence } from '../core/registry/index.js';
import { FLEET_TOPIC_ROOT } from './policy.js';

export interface PresenceOptions {
  pool: pg.Pool;
  aedes: Aedes;
  log: Logger;
  clock: () => Date;
  /** The broker node whose sessions these are (devices.connected_node). */
  nodeId: string;
  flushMs?: number;
}

/**
 * Presence, off the connect path. The registry gets the latest state of each identity in one batched
 * statement per interval, so a reconnect storm costs a handful of writes; service identities see
 * lifecycle events under $fleet/lifecycle/<id>/… and a retained online/offline state under
 * $fleet/presence/<id>, published on a later turn of the event loop than the CONNECT that caused them.
 */
export function presenceTracker(o: PresenceOptions) {
  let pending = new Map<string, PresenceUpdate>();
  let flushing: Promise<void> = Promise.resolve();
  /** Devices online through this node, as last recorded: written again should the node's lease lapse. */
  const online = new Map<string, PresenceUpdate>();
  const announcements = announcer(o);

  const flush = () => {
    if (pending.size === 0) return flushing;
    const updates = [...pending.values()];
    pending = new Map();
    flushing = flushing
      .then(() => recordPresence(o.pool, o.nodeId, updates))
      .catch((error) => o.log.warn({ err: error, updates: updates.length }, 'could not record presence; the next change of each device will'));
    return flushing;
  };
  const timer = setInterval(flush, o.flushMs ?? 1000);
  timer.unref();

  const record = (deviceId: string, serial: string, connected: boolean, peerAddress: string | null) => {
    const update = { deviceId, connected, at: o.clock(), peerAddress, serial };
    pending.set(deviceId, update);
    if (connected) online.set(deviceId, update);
    else online.delete(deviceId);
    announcements.add(update, serial);
  };

  return {
    connected: (deviceId: string, serial: string, peerAddress: string | null) => record(deviceId, serial, true, peerAddress),
    disconnected: (deviceId: string, serial: string) => record(deviceId, serial, false, null),
    flush,
    /**
     * The node's lease lapsed and another node cleared its devices: writes each live session's
     * presence again (as first seen, so connected_since holds), unless a newer change is pending.
     */
    rewriteOnline(): number {
      for (const [deviceId, update] of online) if (!pending.has(deviceId)) pending.set(deviceId, update);
      return online.size;
    },
    /** At shutdown, once every session is closed: writes what is pending, then this node's devices offline. */
    async close() {
      clearInterval(timer);
      announcements.close();
      await flush();
      try {
        const devices = await recordNodeDisconnected(o.pool, o.nodeId, o.clock());
        o.log.info({ devices, node: o.nodeId }, 'recorded every device of this node offline');
      } catch (error) {
        o.log.warn({ err: error, node: o.nodeId }, 'could not record presence at shutdown; the next start of this node, or its lease expiring, clears it');
      }
    },
  };
}

/**
 * The lifecycle and presence publications, queued and published together on the next turn of the
 * event loop (setImmediate): admitting a CONNECT never includes aedes routing, and storing as
 * retained, what it caused, and a storm's publications go out in batches. Order is kept.
 */
function announcer(o: Pick<PresenceOptions, 'aedes' | 'log'>) {
  let queue: { update: PresenceUpdate; serial: string }[] = [];
  let scheduled: NodeJS.Immediate | undefined;

  const publish = (topic: string, payload: Buffer, retain: boolean) =>
    o.aedes.publish({ cmd: 'publish', topic, payload, qos: 1, retain, dup: false }, (error) => {
      if (error) o.log.warn({ err: error, topic }, 'could not publish a lifecycle event');
    });

  const drain = () => {
    scheduled = undefined;
    const batch = queue;
    queue = [];
    for (const { update, serial } of batch) {
      const state = { online: update.connected, at: update.at.toISOString(), peer: update.peerAddress, serial };
      const payload = Buffer.from(JSON.stringify(state));
      publish(`${FLEET_TOPIC_ROOT}/presence/${update.deviceId}`, payload, true);
      publish(`${FLEET_TOPIC_ROOT}/lifecycle/${update.deviceId}/${update.connected ? 'connected' : 'disconnected'}`, payload, false);
    }
  };

  return {
    add(update: PresenceUpdate, serial: string) {
      queue.push({ update, serial });
      // While aedes closes its sessions at shutdown, their offline state goes out before its emitter closes.
      if (o.aedes.closed) drain();
      else scheduled ??= setImmediate(drain);
    },
    /** At shutdown: nothing is left queued once the sessions are closed. */
    close() {
      if (scheduled) clearImmediate(scheduled);
      drain();
    },
  };
}
