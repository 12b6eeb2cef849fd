import { createScheduler, MAX_TIMER_MS, type Scheduler, type Timer } from '../../core/scheduler.js';

interface Armed {
  due: number;
  fire: () => void;
}

/**
 * Time that moves only when the test says so. Its timer behaves as Node's setTimeout does (a delay
 * above 2^31-1 ms or below 1 ms becomes 1 ms), so a scheduler that forgets the limit fails here too.
 */
export interface ManualTime {
  /** Epoch milliseconds now. */
  now(): number;
  /** The same instant as a Date, for the parts that take a clock. */
  clock(): Date;
  /** The real deadline scheduler, running on this time. */
  scheduler: Scheduler;
  /** The timer the scheduler runs on, exposed so tests can count what it armed. */
  timer: Timer & { readonly armed: number };
  /** Moves time forward by `ms`, firing every timer that falls due, in order, each at its own instant. */
  advance(ms: number): void;
  /** Moves time forward to `at` (no-op if it is already past). */
  advanceTo(at: number): void;
}

export function manualTime(start = Date.now(), onError?: (error: unknown) => void): ManualTime {
  let now = start;
  const armed = new Set<Armed>();
  const timer = {
    set(fire: () => void, ms: number) {
      const delay = ms > MAX_TIMER_MS || !(ms >= 1) ? 1 : Math.floor(ms);
      const handle: Armed = { due: now + delay, fire };
      armed.add(handle);
      return handle;
    },
    clear: (handle: unknown) => void armed.delete(handle as Armed),
    get armed() {
      return armed.size;
    },
  };
  const advanceTo = (at: number) => {
    // A scheduler that re-arms 1 ms timers without end would spin a real process; here it fails.
    for (let fired = 0; ; fired++) {
      if (fired > 100_000) throw new Error('more than 100,000 timers fired in one advance: a timer storm');
      let next: Armed | undefined;
      for (const handle of armed) if (handle.due <= at && (!next || handle.due < next.due)) next = handle;
      if (!next) break;
      armed.delete(next);
      now = Math.max(now, next.due);
      next.fire();
    }
    now = Math.max(now, at);
  };
  return {
    now: () => now,
    clock: () => new Date(now),
    scheduler: createScheduler({ now: () => now, timer, onError }),
    timer,
    advance: (ms) => advanceTo(now + ms),
    advanceTo,
  };
}
