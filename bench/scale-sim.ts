/**
 * The simulated fleet as the scale benchmark drives it: `runSimulation` with its devices in worker
 * processes, followed through its once-a-second progress, until the benchmark stops it.
 */
import { runSimulation, type Progress, type SimOptions } from '../device-sim/run.js';
import type { SimReport } from '../device-sim/report.js';
import { setTimeout as sleep } from 'node:timers/promises';

export interface Sample {
  at: number;
  live: number;
  connects: number;
}

export class SimRun {
  latest: Progress | undefined;
  readonly samples: Sample[] = [];
  /** When enrollment ended and the devices began to connect (performance.now()). */
  startedAt: number | undefined;
  readonly report: Promise<SimReport>;
  /** Throws when something the run depends on is gone (the broker process), so no wait runs out its timeout. */
  check: (() => void) | undefined;
  private readonly abort = new AbortController();
  private settled = false;

  constructor(options: Partial<SimOptions> & { devices: number }) {
    this.report = runSimulation({
      ...options,
      duration: 0,
      progress: false,
      signal: this.abort.signal,
      onProgress: (p) => {
        const at = performance.now();
        this.startedAt ??= at - p.elapsedSeconds * 1000;
        this.latest = p;
        this.samples.push({ at, live: live(p), connects: p.counters.connects });
      },
    });
    this.report.then(
      () => (this.settled = true),
      () => (this.settled = true),
    );
  }

  get live(): number {
    return this.latest ? live(this.latest) : 0;
  }

  /** Waits until `done` holds, polling; false on timeout. A simulation that ends early throws its error. */
  async until(done: () => boolean | Promise<boolean>, timeoutMs: number, poll = 100): Promise<boolean> {
    const deadline = performance.now() + timeoutMs;
    while (!(await done())) {
      this.check?.();
      if (this.settled) {
        await this.report;
        throw new Error('the simulation ended before the benchmark stopped it');
      }
      if (performance.now() > deadline) return false;
      await sleep(poll);
    }
    return true;
  }

  /** The largest per-second rise in connects between two samples after `from`. */
  peakConnectsPerSecond(from: number, to = Infinity): number {
    let peak = 0;
    const window = this.samples.filter((s) => s.at >= from && s.at <= to);
    for (let i = 1; i < window.length; i++) {
      const seconds = (window[i]!.at - window[i - 1]!.at) / 1000;
      if (seconds > 0) peak = Math.max(peak, (window[i]!.connects - window[i - 1]!.connects) / seconds);
    }
    return Math.round(peak);
  }

  async stop(): Promise<SimReport> {
    this.abort.abort();
    return this.report;
  }
}

const live = (p: Progress) => p.states.connected + p.states.renewing;

/** What changed in a failures map between two readings. */
export function failuresSince(before: Record<string, number>, after: Record<string, number>): Record<string, number> {
  const changed: Record<string, number> = {};
  for (const [reason, n] of Object.entries(after)) if (n - (before[reason] ?? 0) > 0) changed[reason] = n - (before[reason] ?? 0);
  return changed;
}
