/**
 * What 100,000 session deadlines cost: one setTimeout each (the broker before the scheduler) against
 * one deadline scheduler with a single timer. Run: `npx tsc -p tsconfig.json && node --expose-gc
 * dist/test/bench/deadlines.bench.js [setTimeout|scheduler] [count]`, one side per process so neither
 * inherits the other's garbage. Each round arms the deadlines, moves every one of them (a renewal
 * re-reading its overlap), then cancels them all (sessions closing); the best time of five rounds is shown,
 * and the largest heap.
 */
import { performance } from 'node:perf_hooks';
import { createScheduler } from '../../core/scheduler.js';

const only = process.argv[2];
const count = Number(process.argv[3] ?? 100_000);
const DAY = 86_400_000;
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with node --expose-gc so the heap figures mean something');

interface Side {
  arm(i: number, ms: number): void;
  move(i: number, ms: number): void;
  cancel(i: number): void;
}

function timers(): Side {
  const handles: NodeJS.Timeout[] = new Array(count);
  const fire = () => {};
  return {
    arm: (i, ms) => void (handles[i] = setTimeout(fire, ms).unref()),
    move: (i, ms) => {
      clearTimeout(handles[i]);
      handles[i] = setTimeout(fire, ms).unref();
    },
    cancel: (i) => clearTimeout(handles[i]),
  };
}

function scheduler(): Side {
  const deadlines = createScheduler();
  const handles: ReturnType<typeof deadlines.at>[] = new Array(count);
  const fire = () => {};
  return {
    arm: (i, ms) => void (handles[i] = deadlines.at(Date.now() + ms, fire)),
    move: (i, ms) => handles[i]!.reschedule(Date.now() + ms),
    cancel: (i) => handles[i]!.cancel(),
  };
}

// Deadlines spread like certificate expiries: from an hour to 90 days out (below Node's timer limit for setTimeout's sake).
const delays = Array.from({ length: count }, (_, i) => 3_600_000 + ((i * 7919) % (20 * DAY)));

function round(make: () => Side): { armMs: number; moveMs: number; cancelMs: number; heapMb: number } {
  gc!();
  const heapBefore = process.memoryUsage().heapUsed;
  const side = make();
  let started = performance.now();
  for (let i = 0; i < count; i++) side.arm(i, delays[i]!);
  const armMs = performance.now() - started;
  gc!();
  const heapMb = (process.memoryUsage().heapUsed - heapBefore) / 1024 / 1024;
  started = performance.now();
  for (let i = 0; i < count; i++) side.move(i, delays[count - 1 - i]!);
  const moveMs = performance.now() - started;
  started = performance.now();
  for (let i = 0; i < count; i++) side.cancel(i);
  const cancelMs = performance.now() - started;
  return { armMs, moveMs, cancelMs, heapMb };
}

const sides: Record<string, () => Side> = { setTimeout: timers, scheduler };
for (const [name, make] of Object.entries(sides)) {
  if (only && only !== name) continue;
  const rounds = Array.from({ length: 5 }, () => round(make));
  const best = (key: keyof (typeof rounds)[0]) => Math.min(...rounds.map((r) => r[key]));
  const ms = (key: 'armMs' | 'moveMs' | 'cancelMs') => `${best(key).toFixed(0).padStart(5)} ms`;
  console.log(
    `${count.toLocaleString('en')} deadlines, ${name.padEnd(10)}  arm ${ms('armMs')}   move ${ms('moveMs')}   cancel ${ms('cancelMs')}   heap while armed ${Math.max(...rounds.map((r) => r.heapMb)).toFixed(1).padStart(5)} MB`,
  );
}
