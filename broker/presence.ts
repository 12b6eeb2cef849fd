import type { Aedes } from 'aedes';
import type pg from 'pg';
import type { Logger } from '../core/log.js';
import { type PresenceUpdate, recordAllDisconnected, recordPresence } from '../core/registry/index.js';
import { FLEET_TOPIC_ROOT } from './policy.js';

export interface PresenceOptions {
  pool: pg.Pool;
  aedes: Aedes;
  log: Logger;
  clock: () => Date;
  flushMs?: number;
}

/**
 * Presence, off the connect path. The registry gets the latest state of each identity in one batched
 * statement per interval, so a reconnect storm costs a handful of writes; service identities see
 * lifecycle events under $fleet/lifecycle/<id>/… and a retained online/offline state under
 * $fleet/presence/<id>.
 */
export function presenceTracker(o: PresenceOptions) {
  let pending = new Map<string, PresenceUpdate>();
  let flushing: Promise<void> = Promise.resolve();

  const flush = () => {
    if (pending.size === 0) return flushing;
    const updates = [...pending.values()];
    pending = new Map();
    flushing = flushing
      .then(() => recordPresence(o.pool, updates))
      .catch((error) => o.log.warn({ err: error, updates: updates.length }, 'could not record presence; the next change of each device will'));
    return flushing;
  };
  const timer = setInterval(flush, o.flushMs ?? 1000);
  timer.unref();

  const announce = (update: PresenceUpdate, serial: string) => {
    const state = { online: update.connected, at: update.at.toISOString(), peer: update.peerAddress, serial };
    const payload = Buffer.from(JSON.stringify(state));
    const publish = (topic: string, retain: boolean) =>
      o.aedes.publish({ cmd: 'publish', topic, payload, qos: 1, retain, dup: false }, (error) => {
        if (error) o.log.warn({ err: error, topic }, 'could not publish a lifecycle event');
      });
    publish(`${FLEET_TOPIC_ROOT}/presence/${update.deviceId}`, true);
    publish(`${FLEET_TOPIC_ROOT}/lifecycle/${update.deviceId}/${update.connected ? 'connected' : 'disconnected'}`, false);
  };

  const record = (deviceId: string, serial: string, connected: boolean, peerAddress: string | null) => {
    const update = { deviceId, connected, at: o.clock(), peerAddress, serial };
    pending.set(deviceId, update);
    announce(update, serial);
  };

  return {
    connected: (deviceId: string, serial: string, peerAddress: string | null) => record(deviceId, serial, true, peerAddress),
    disconnected: (deviceId: string, serial: string) => record(deviceId, serial, false, null),
    flush,
    /** At shutdown, once every session is closed: writes what is pending, then every device offline. */
    async close() {
      clearInterval(timer);
      await flush();
      try {
        const devices = await recordAllDisconnected(o.pool, o.clock());
        o.log.info({ devices }, 'recorded every device offline');
      } catch (error) {
        o.log.warn({ err: error }, 'could not record presence at shutdown; the next start clears it');
      }
    },
  };
}
