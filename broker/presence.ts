import type pg from 'pg';
import type { Logger } from '../core/log.js';
import { markDevicesSeen } from '../core/registry/index.js';

/**
 * Records that devices were seen, off the connect path: ids gather in memory and are written in one
 * statement per interval, so a reconnect storm costs a handful of writes.
 */
export function presenceWriter(pool: pg.Pool, log: Logger, clock: () => Date, intervalMs = 1000) {
  let pending = new Set<string>();
  let flushing: Promise<void> = Promise.resolve();
  const flush = () => {
    if (pending.size === 0) return flushing;
    const ids = [...pending];
    pending = new Set();
    flushing = flushing
      .then(() => markDevicesSeen(pool, ids, clock()))
      .catch((error) => log.warn({ err: error, devices: ids.length }, 'could not record device presence'));
    return flushing;
  };
  const timer = setInterval(flush, intervalMs);
  timer.unref();
  return {
    seen(deviceId: string) {
      pending.add(deviceId);
    },
    async close() {
      clearInterval(timer);
      await flush();
    },
  };
}
