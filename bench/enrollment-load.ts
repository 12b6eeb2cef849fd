/**
 * The enrollment load of `bench:enroll` and `npm run bench`, run in a worker thread so the client's TLS and parsing do not
 * share an event loop with the server it measures. Enrolls the warm-up bodies untimed, then times
 * the others, over one keep-alive agent with `concurrency` requests in flight.
 */
import https from 'node:https';
import { performance } from 'node:perf_hooks';
import { parentPort, Worker, workerData } from 'node:worker_threads';
import { mapLimited } from '../core/concurrency.js';

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

async function load(order: LoadOrder): Promise<LoadResult> {
  const agent = new https.Agent({ keepAlive: true, maxSockets: order.concurrency, ca: order.ca });
  try {
    const enroll = (body: string) => postJson(agent, order.url, body);
    await mapLimited(order.warmUpBodies, order.concurrency, enroll);
    const started = performance.now();
    const outcomes = await mapLimited(order.bodies, order.concurrency, enroll);
    return { seconds: (performance.now() - started) / 1000, outcomes };
  } finally {
    agent.destroy();
  }
}

/** Runs the load in a worker thread (this file) and waits for its result. */
export function runEnrollmentLoad(order: LoadOrder): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL(import.meta.url), { workerData: order });
    worker.once('message', (result: LoadResult) => {
      resolve(result);
      void worker.terminate();
    });
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`the load worker exited with code ${code} before reporting`)));
  });
}

if (parentPort) parentPort.postMessage(await load(workerData as LoadOrder));
