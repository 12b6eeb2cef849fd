import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Waits for a state the system reaches on its own (a registry change it follows, a batched write,
 * another process taking up a CA change) by polling `check`, and fails naming what never happened.
 * The bound is generous and only ends a test that would otherwise hang: it is no timing assertion.
 */
export async function eventually(check: () => boolean | Promise<boolean>, what: string, o: { tries?: number; intervalMs?: number } = {}): Promise<void> {
  const tries = o.tries ?? 600;
  for (let i = 0; i < tries; i++) {
    if (await check()) return;
    await sleep(o.intervalMs ?? 50);
  }
  assert.fail(`never happened: ${what}`);
}
