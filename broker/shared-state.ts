import { createRequire } from 'node:module';
import { FleetError } from '../core/errors.js';
import type { Logger } from '../core/log.js';

/*
 * What broker processes (workers on one machine, nodes on several) share through Redis: aedes' message
 * emitter (mqemitter-redis: every publish, and aedes' own $SYS announcements such as "client X
 * connected here", which is how a second connection of a client id on another broker closes the
 * first), and its persistence (aedes-persistence-redis: retained messages, persistent sessions'
 * subscriptions and queued QoS 1/2 messages, Wills).
 *
 * Known limits, from both projects' documentation and open issues:
 * - aedes-persistence-redis keeps every retained message in one hash (`retained`), so on a Redis
 *   Cluster they all land on one node (moscajs/aedes-persistence-redis #85; its cluster mode splits
 *   them, this one-node setup does not need it). A wildcard subscription scans that hash (HSCAN with
 *   the filter's longest literal prefix), so it costs in proportion to the retained messages under the
 *   prefix (#33, #119). Keep retained messages to a few per device.
 * - Connects are slower with the Redis persistence than in memory (#10): a clean session still costs
 *   Redis round trips at CONNECT and at close. The broker measures its connect path in
 *   fleet_broker_connect_seconds; the README's "Scaling out" section gives the figures.
 * - Redis pub/sub channels are not per database: two fleets on one Redis server would see each
 *   other's messages, whatever database number their URLs name. One Redis (or one Redis server
 *   per fleet) is a requirement, not an option; so is keeping Redis on a private network, since a
 *   broker believes what arrives through it.
 */

/** aedes' emitter and persistence, as aedes' constructor takes them (`mq`, `persistence`). */
export interface SharedState {
  mq: unknown;
  persistence: unknown;
  /** Disconnects from Redis; after the aedes using them has closed. */
  close(): Promise<void>;
}

interface RedisEmitter {
  state: NodeJS.EventEmitter;
  subConn: { disconnect(): void };
  pubConn: { disconnect(): void };
  close(cb: () => void): void;
}

interface RedisPersistence {
  /** The promise form: the callback form waits for a 'ready' that aedes 1.x's setup() never sets off. */
  destroy(): Promise<void>;
}

// Both are CommonJS packages without ES module entry points.
const require = createRequire(import.meta.url);

/** How long a start waits for Redis before it stops, saying so: a broker that cannot share its state must not run alone. */
const CONNECT_TIMEOUT_MS = 10_000;

/** Connection settings for ioredis from a redis:// or rediss:// URL (the persistence takes no URL). */
export function redisOptions(url: string): Record<string, unknown> {
  const parsed = new URL(url);
  const db = parsed.pathname.replace(/^\//, '');
  return {
    host: parsed.hostname.replace(/^\[|\]$/g, ''),
    port: parsed.port === '' ? 6379 : Number(parsed.port),
    ...(parsed.username ? { username: decodeURIComponent(parsed.username) } : {}),
    ...(parsed.password ? { password: decodeURIComponent(parsed.password) } : {}),
    ...(db ? { db: Number(db) } : {}),
    ...(parsed.protocol === 'rediss:' ? { tls: {} } : {}),
    // Commands wait while Redis is away (ioredis queues them) but not forever: a publish fails rather than hangs.
    maxRetriesPerRequest: 3,
  };
}

/** Redis as the URL writes it, password left out: for log lines and errors. */
export const redisLabel = (url: string): string => {
  const parsed = new URL(url);
  parsed.password = '';
  parsed.username = '';
  return parsed.toString();
};

/** Connects aedes' emitter and persistence to Redis; refuses to start when Redis does not answer. */
export async function connectSharedState(url: string, log: Logger): Promise<SharedState> {
  const options = redisOptions(url);
  const createEmitter = require('mqemitter-redis') as (options: object) => RedisEmitter;
  const createPersistence = require('aedes-persistence-redis') as (options: object) => RedisPersistence;
  const mq = createEmitter(options);
  let connected = false;
  // Without a listener, an 'error' on the emitter's state would end the process; ioredis reconnects by itself.
  mq.state.on('error', (error: Error) => {
    if (connected) log.warn({ err: error, redis: redisLabel(url) }, 'Redis connection failed; reconnecting');
  });
  try {
    await bothConnected(mq.state, CONNECT_TIMEOUT_MS);
  } catch (error) {
    // close() would QUIT and wait for an answer that never comes; this stops ioredis reconnecting.
    mq.subConn.disconnect();
    mq.pubConn.disconnect();
    throw new FleetError(
      'redis_unreachable',
      1,
      `Redis at ${redisLabel(url)} (FLEET_REDIS_URL) did not answer within ${CONNECT_TIMEOUT_MS / 1000} s: ${(error as Error).message}; start Redis or fix the URL`,
    );
  }
  connected = true;
  const persistence = createPersistence(options);
  return {
    mq,
    persistence,
    async close() {
      // aedes has closed the emitter by now, so the persistence's unsubscribe from it may fail; its Redis connection still closes.
      await persistence.destroy().catch((error: unknown) => log.debug({ err: error }, 'closing the Redis persistence'));
      await new Promise<void>((resolve) => mq.close(() => resolve()));
    },
  };
}

/** The emitter's publishing and subscribing connections are both up. */
function bothConnected(state: NodeJS.EventEmitter, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const waiting = new Set(['pubConnect', 'subConnect']);
    let lastError: Error | undefined;
    const timer = setTimeout(() => reject(lastError ?? new Error('no connection')), timeoutMs);
    const onError = (error: Error) => (lastError = error);
    state.on('error', onError);
    for (const event of waiting) {
      state.once(event, () => {
        waiting.delete(event);
        if (waiting.size > 0) return;
        clearTimeout(timer);
        state.off('error', onError);
        resolve();
      });
    }
  });
}
