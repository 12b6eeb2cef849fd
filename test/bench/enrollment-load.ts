/**
 * The load generator of `bench:enroll`, run in a worker thread so the client's TLS and parsing do not
 * share an event loop with the server it measures. Enrolls the warm-up bodies untimed, then times
 * the others, over one keep-alive agent with `concurrency` requests in flight.
 */
import https from 'node:https';
import { performance } from 'node:perf_hooks';
import { parentPort, workerData } from 'node:worker_threads';

export interface LoadOrder {
  url: string;
  ca: string;
  concurrency: number;
  warmUpBodies: string[];
  bodies: string[];
}

export interface Outcome {
  latencyMs: number;
  status: number;
  problem?: string;
}

export interface LoadResult {
  seconds: number;
  outcomes: Outcome[];
}

/** POSTs JSON and times the whole exchange, response body included. */
function postJson(agent: https.Agent, url: string, body: string): Promise<Outcome> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = https.request(url, { method: 'POST', agent, headers: { 'content-type': 'application/json' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        const latencyMs = performance.now() - started;
        const status = res.statusCode ?? 0;
        resolve(status === 201 ? { latencyMs, status } : { latencyMs, status, problem: Buffer.concat(chunks).toString('utf8') });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** Runs `work` over `items` with at most `concurrency` in flight, keeping the results in order. */
export async function inParallel<T, R>(items: T[], concurrency: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await work(items[index]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
  return results;
}

async function load(order: LoadOrder): Promise<LoadResult> {
  const agent = new https.Agent({ keepAlive: true, maxSockets: order.concurrency, ca: order.ca });
  try {
    const enroll = (body: string) => postJson(agent, order.url, body);
    await inParallel(order.warmUpBodies, order.concurrency, enroll);
    const started = performance.now();
    const outcomes = await inParallel(order.bodies, order.concurrency, enroll);
    return { seconds: (performance.now() - started) / 1000, outcomes };
  } finally {
    agent.destroy();
  }
}

if (parentPort) parentPort.postMessage(await load(workerData as LoadOrder));
