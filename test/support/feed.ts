import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import { CONNECTIONS } from '../../core/db/database.js';

/**
 * Decides when the change feed may reconnect: while closed, a reconnect waits, so a test knows a
 * change it commits meanwhile reaches no LISTEN and can only arrive by the replay.
 */
export class ReconnectGate {
  #open = true;
  #waiting: (() => void)[] = [];

  close(): void {
    this.#open = false;
  }

  open(): void {
    this.#open = true;
    for (const resume of this.#waiting.splice(0)) resume();
  }

  /** Pass as startFleet's `waitToReconnect`. */
  readonly wait = async (delayMs: number): Promise<void> => {
    await sleep(Math.min(delayMs, 100));
    if (!this.#open) await new Promise<void>((resolve) => this.#waiting.push(resolve));
  };
}

/** Ends the change feed's connection from the server side, as a restart or a network cut would. */
export async function cutChangeFeed(pool: pg.Pool): Promise<number> {
  const { rowCount } = await pool.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [
    CONNECTIONS.changeFeed.applicationName,
  ]);
  return rowCount ?? 0;
}
