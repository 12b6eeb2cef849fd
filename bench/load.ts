/**
 * One or more load generator processes (load-generator.ts) driven as one: each owns a contiguous
 * share of the devices and of the concurrency, every order goes to all of them, and their answers
 * are merged. More than one lets a broker on several cores be driven past what one client core can.
 */
import { forkChild, type Child } from './child.js';
import type { ConnectRun, LoadAnswer, LoadDevice, LoadOrder } from './load-generator.js';

type Generator = Child<LoadOrder, LoadAnswer>;

export interface Load {
  pids: number[];
  ask<T extends LoadAnswer['type']>(order: LoadOrder, expected: T): Promise<Extract<LoadAnswer, { type: T }>>;
  stop(): Promise<void>;
}

const share = (total: number, parts: number, index: number) => Math.floor((total * (index + 1)) / parts) - Math.floor((total * index) / parts);

function merge(answers: LoadAnswer[]): LoadAnswer {
  const first = answers[0]!;
  switch (first.type) {
    case 'connected': {
      const runs = answers as (ConnectRun & { type: 'connected' })[];
      return {
        type: 'connected',
        latenciesMs: runs.flatMap((r) => r.latenciesMs),
        seconds: Math.max(...runs.map((r) => r.seconds)),
        failures: runs.reduce((n, r) => n + r.failures, 0),
        firstFailure: runs.find((r) => r.firstFailure)?.firstFailure,
        resumed: runs.reduce((n, r) => n + r.resumed, 0),
      };
    }
    case 'published': {
      const runs = answers as Extract<LoadAnswer, { type: 'published' }>[];
      return { type: 'published', messages: runs.reduce((n, r) => n + r.messages, 0), seconds: Math.max(...runs.map((r) => r.seconds)) };
    }
    case 'released':
      return { type: 'released', dropped: (answers as Extract<LoadAnswer, { type: 'released' }>[]).reduce((n, r) => n + r.dropped, 0) };
    default:
      return first;
  }
}

/** Forks `count` generators and hands each its share of `devices`, building their TLS contexts. */
export async function startLoad(count: number, devices: LoadDevice[], caPem: string): Promise<Load> {
  const generators: Generator[] = Array.from({ length: count }, (_, i) =>
    forkChild<LoadOrder, LoadAnswer>(new URL('./load-generator.js', import.meta.url), `load generator ${i + 1}`),
  );
  const stop = async () => {
    await Promise.all(generators.map((g) => g.stop()));
  };
  // Each generator's order, with the counts that are shares cut to its share.
  const orderFor = (order: LoadOrder, index: number): LoadOrder => {
    if (order.type === 'devices') return order;
    if (!('concurrency' in order)) return order;
    const concurrency = Math.max(1, share(order.concurrency, count, index));
    if (order.type === 'connects' && order.count !== undefined) return { ...order, concurrency, count: share(order.count, count, index) };
    return { ...order, concurrency };
  };
  const load: Load = {
    pids: generators.map((g) => g.process.pid!),
    async ask<T extends LoadAnswer['type']>(order: LoadOrder, expected: T) {
      const answers = await Promise.all(generators.map((g, i) => g.ask(orderFor(order, i))));
      const merged = merge(answers);
      if (merged.type !== expected) throw new Error(`a load generator answered ${merged.type}, not ${expected}`);
      return merged as Extract<LoadAnswer, { type: T }>;
    },
    stop,
  };
  try {
    const starts = generators.map((_, i) => Math.floor((devices.length * i) / count));
    await Promise.all(generators.map((g, i) => g.ask({ type: 'devices', devices: devices.slice(starts[i], starts[i]! + share(devices.length, count, i)), caPem })));
  } catch (error) {
    await stop();
    throw error;
  }
  return load;
}
