import type pg from 'pg';
import type { Queryable } from '../db/transaction.js';
import type { Logger } from '../log.js';
import { type Repeating, repeatEvery, type Scheduler } from '../scheduler.js';

/** One bounded batch: each statement holds its locks briefly, however far behind the retention is. */
const DELETE_EVENTS_BEFORE = `
  DELETE FROM device_events WHERE id IN (SELECT id FROM device_events WHERE at < $1 ORDER BY at LIMIT $2)`;

const BATCH = 5_000;
/** A run deletes at most this many batches; the next run goes on. */
const MAX_BATCHES = 200;

/** Deletes events from before `before`, a batch at a time; returns how many. */
export async function deleteDeviceEventsBefore(q: Queryable, before: Date, o: { batchSize?: number; maxBatches?: number } = {}): Promise<number> {
  const batchSize = o.batchSize ?? BATCH;
  let deleted = 0;
  for (let batch = 0; batch < (o.maxBatches ?? MAX_BATCHES); batch++) {
    const count = (await q.query(DELETE_EVENTS_BEFORE, [before, batchSize])).rowCount ?? 0;
    deleted += count;
    if (count < batchSize) break;
  }
  return deleted;
}

export interface EventRetentionOptions {
  pool: pg.Pool;
  scheduler: Scheduler;
  clock: () => Date;
  log: Logger;
  /** How long events are kept (FLEET_EVENT_RETENTION). */
  retentionMs: number;
  /** How often old events are looked for; hourly by default. */
  everyMs?: number;
}

/** Keeps the event table to its retention: deletes older events periodically, on the scheduler's time. */
export function keepDeviceEventsFor(o: EventRetentionOptions): Repeating {
  return repeatEvery(o.scheduler, o.everyMs ?? 3_600_000, async () => {
    try {
      const deleted = await deleteDeviceEventsBefore(o.pool, new Date(o.clock().getTime() - o.retentionMs));
      if (deleted > 0) o.log.info({ deleted }, 'deleted device events older than the retention (FLEET_EVENT_RETENTION)');
    } catch (error) {
      o.log.warn({ err: error }, 'could not delete old device events; trying again at the next interval');
    }
  });
}
