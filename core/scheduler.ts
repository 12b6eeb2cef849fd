/**
 * Deadlines (a session's certificate expiry, the end of a renewal overlap) kept in one binary heap,
 * with a single underlying timer armed for the earliest. Adding, cancelling and moving a deadline
 * cost O(log n), and 100,000 sessions hold one timer rather than 100,000.
 */

/** Longest delay Node's setTimeout honours (about 24.8 days); a longer one would fire after 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** The one timer a scheduler runs on: setTimeout in production, a hand-moved one in tests. */
export interface Timer {
  set(fire: () => void, ms: number): unknown;
  clear(handle: unknown): void;
}

/** A pending deadline, as handed back by `at`. */
export interface Deadline {
  /** When it fires, in the scheduler's milliseconds. */
  readonly at: number;
  /** Whether it is still waiting to fire. */
  readonly pending: boolean;
  /** Drops it; harmless once it fired or was cancelled. */
  cancel(): void;
  /** Moves it to `at`, putting it back if it had fired or was cancelled. */
  reschedule(at: number): void;
}

export interface Scheduler {
  /** The scheduler's clock, in epoch milliseconds: what deadlines are compared against. */
  now(): number;
  /** Calls `fire` once `now()` has reached `at`. Deadlines fire in order; equal ones in the order they were set. */
  at(at: number, fire: () => void): Deadline;
  /** How many deadlines are pending. */
  readonly size: number;
}

export interface SchedulerOptions {
  now?: () => number;
  timer?: Timer;
  /** Told of an exception thrown by a deadline's callback; the other deadlines still fire. */
  onError?: (error: unknown) => void;
}

/** setTimeout, unref'd: a pending deadline never keeps the process alive on its own. */
export const systemTimer: Timer = {
  set(fire, ms) {
    const handle = setTimeout(fire, ms);
    handle.unref();
    return handle;
  },
  clear: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

export function createScheduler(options: SchedulerOptions = {}): Scheduler {
  return new DeadlineHeap(options.now ?? Date.now, options.timer ?? systemTimer, options.onError ?? reportUncaught);
}

function reportUncaught(error: unknown): void {
  console.error('a scheduled deadline failed:', error);
}

class Entry implements Deadline {
  /** Position in the heap; -1 when not in it. */
  index = -1;
  constructor(
    private readonly heap: DeadlineHeap,
    public at: number,
    /** Breaks ties between equal deadlines: the one set first fires first. */
    public order: number,
    readonly fire: () => void,
  ) {}

  get pending(): boolean {
    return this.index >= 0;
  }

  cancel(): void {
    this.heap.remove(this);
  }

  reschedule(at: number): void {
    this.heap.move(this, at);
  }
}

class DeadlineHeap implements Scheduler {
  readonly #heap: Entry[] = [];
  #order = 0;
  #handle: unknown;
  /** The deadline the timer is armed for, to skip re-arming when the earliest did not change. */
  #armedFor: number | undefined;
  #firing = false;

  constructor(
    readonly now: () => number,
    private readonly timer: Timer,
    private readonly onError: (error: unknown) => void,
  ) {}

  get size(): number {
    return this.#heap.length;
  }

  at(at: number, fire: () => void): Deadline {
    const entry = new Entry(this, checked(at), this.#order++, fire);
    this.#insert(entry);
    this.#arm();
    return entry;
  }

  remove(entry: Entry): void {
    if (entry.index < 0) return;
    this.#detach(entry);
    this.#arm();
  }

  move(entry: Entry, at: number): void {
    entry.at = checked(at);
    entry.order = this.#order++;
    if (entry.index < 0) this.#insert(entry);
    else this.#sift(entry.index);
    this.#arm();
  }

  #insert(entry: Entry): void {
    entry.index = this.#heap.length;
    this.#heap.push(entry);
    this.#up(entry.index);
  }

  #detach(entry: Entry): void {
    const heap = this.#heap;
    const i = entry.index;
    const last = heap.pop()!;
    entry.index = -1;
    if (last === entry) return;
    heap[i] = last;
    last.index = i;
    this.#sift(i);
  }

  /** Restores heap order around an entry whose deadline changed or that took another's place. */
  #sift(i: number): void {
    const entry = this.#heap[i]!;
    this.#down(i);
    this.#up(entry.index);
  }

  #up(i: number): void {
    const heap = this.#heap;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!earlier(heap[i]!, heap[parent]!)) return;
      this.#swap(i, parent);
      i = parent;
    }
  }

  #down(i: number): void {
    const heap = this.#heap;
    for (;;) {
      const left = 2 * i + 1;
      const right = left + 1;
      let first = i;
      if (left < heap.length && earlier(heap[left]!, heap[first]!)) first = left;
      if (right < heap.length && earlier(heap[right]!, heap[first]!)) first = right;
      if (first === i) return;
      this.#swap(i, first);
      i = first;
    }
  }

  #swap(a: number, b: number): void {
    const heap = this.#heap;
    const x = heap[a]!;
    const y = heap[b]!;
    heap[a] = y;
    heap[b] = x;
    y.index = a;
    x.index = b;
  }

  /**
   * Keeps the one timer armed no later than the earliest deadline (in steps of at most MAX_TIMER_MS).
   * A timer armed for an earlier deadline that was since cancelled or moved is left to fire: it finds
   * nothing due and re-arms, which is cheaper than re-arming on every change at the top of the heap.
   */
  #arm(): void {
    if (this.#firing) return;
    const next = this.#heap[0];
    if (next && this.#armedFor !== undefined && this.#armedFor <= next.at) return;
    if (!next && this.#armedFor === undefined) return;
    if (this.#handle !== undefined) this.timer.clear(this.#handle);
    this.#handle = undefined;
    this.#armedFor = undefined;
    if (!next) return;
    const wait = Math.min(Math.max(next.at - this.now(), 0), MAX_TIMER_MS);
    this.#armedFor = next.at;
    this.#handle = this.timer.set(() => this.#fireDue(), wait);
  }

  /** Fires every deadline that is due, earliest first, then re-arms for the next. */
  #fireDue(): void {
    this.#handle = undefined;
    this.#armedFor = undefined;
    this.#firing = true;
    try {
      const now = this.now();
      for (let next = this.#heap[0]; next && next.at <= now; next = this.#heap[0]) {
        this.#detach(next);
        try {
          next.fire();
        } catch (error) {
          this.onError(error);
        }
      }
    } finally {
      this.#firing = false;
      this.#arm();
    }
  }
}

function earlier(a: Entry, b: Entry): boolean {
  return a.at < b.at || (a.at === b.at && a.order < b.order);
}

function checked(at: number): number {
  if (Number.isNaN(at)) throw new RangeError('a deadline must be a time, not NaN');
  return at;
}

export interface Repeating {
  /** No further run starts; one under way finishes. */
  stop(): void;
}

/**
 * Runs `task` every `intervalMs` on the scheduler's time, each interval counted from the end of the
 * run before, so runs never overlap and a slow one does not queue others behind it. The task reports
 * its own failures; the next run comes either way.
 */
export function repeatEvery(scheduler: Scheduler, intervalMs: number, task: () => unknown): Repeating {
  let stopped = false;
  const run = () => {
    void Promise.resolve()
      .then(task)
      .catch(() => undefined)
      .finally(() => {
        if (!stopped) deadline.reschedule(scheduler.now() + intervalMs);
      });
  };
  const deadline = scheduler.at(scheduler.now() + intervalMs, run);
  return {
    stop() {
      stopped = true;
      deadline.cancel();
    },
  };
}
