/*
 * Rate limits keyed by who asks (an address, a credential), with time from a clock passed in so
 * tests step it instead of waiting. Memory is bounded: past `maxKeys` the least recently seen key
 * is forgotten, which for a bucket is the same as letting it refill.
 */

export interface KeyedLimiter {
  /** Takes one from `key`'s allowance; undefined when allowed, else how long until it would be. */
  take(key: string): { retryAfterMs: number } | undefined;
  readonly trackedKeys: number;
}

export const DEFAULT_MAX_KEYS = 100_000;

/** Least recently used first: a Map keeps insertion order, and each visit re-inserts. */
function boundedMap<V>(maxKeys: number) {
  const map = new Map<string, V>();
  return {
    map,
    touch(key: string, value: V) {
      map.delete(key);
      map.set(key, value);
      while (map.size > maxKeys) map.delete(map.keys().next().value!);
    },
  };
}

/** A token bucket per key: `perSecond` sustained, `burst` at once after a quiet spell. */
export function tokenBuckets(options: { perSecond: number; burst: number; clock: () => number; maxKeys?: number }): KeyedLimiter {
  const { perSecond, burst, clock } = options;
  const maxKeys = options.maxKeys ?? DEFAULT_MAX_KEYS;
  if (!(perSecond > 0) || !(burst >= 1) || !(maxKeys >= 1)) throw new RangeError('tokenBuckets needs perSecond > 0, burst >= 1 and maxKeys >= 1');
  const buckets = boundedMap<{ tokens: number; at: number }>(maxKeys);
  // A bucket untouched this long has refilled; forgetting it is the same as keeping it.
  const refilledAfterMs = (burst / perSecond) * 1000;
  const forgetRefilled = (now: number) => {
    for (const [key, bucket] of buckets.map) {
      if (now - bucket.at < refilledAfterMs) break;
      buckets.map.delete(key);
    }
  };
  return {
    take(key) {
      const now = clock();
      const bucket = buckets.map.get(key);
      // A clock that steps back refills nothing rather than draining the bucket.
      const tokens = bucket ? Math.min(burst, bucket.tokens + (Math.max(0, now - bucket.at) * perSecond) / 1000) : burst;
      const allowed = tokens >= 1;
      buckets.touch(key, { tokens: allowed ? tokens - 1 : tokens, at: now });
      forgetRefilled(now);
      return allowed ? undefined : { retryAfterMs: Math.ceil(((1 - tokens) * 1000) / perSecond) };
    },
    get trackedKeys() {
      return buckets.map.size;
    },
  };
}

export interface FailureBackoff {
  /** Whether `key` is locked out now, and for how long. */
  check(key: string): { retryAfterMs: number } | undefined;
  /** Records failures; past the free ones each locks `key` out twice as long as the last, up to the cap. */
  failed(key: string, count?: number): void;
  readonly trackedKeys: number;
}

/**
 * Exponential backoff after repeated failures: `free` failures cost nothing, the next locks the key
 * out for one second, then two, four, … up to `maxMs`. Failures are forgotten after `maxMs` without
 * one, so a legitimate user who mistyped is never held longer than that.
 */
export function failureBackoff(options: { free: number; maxMs: number; clock: () => number; maxKeys?: number }): FailureBackoff {
  const { free, maxMs, clock } = options;
  const entries = boundedMap<{ failures: number; last: number; lockedUntil: number }>(options.maxKeys ?? DEFAULT_MAX_KEYS);
  const current = (key: string, now: number) => {
    const entry = entries.map.get(key);
    return entry && now - entry.last < maxMs ? entry : undefined;
  };
  return {
    check(key) {
      const now = clock();
      const entry = current(key, now);
      return entry && entry.lockedUntil > now ? { retryAfterMs: entry.lockedUntil - now } : undefined;
    },
    failed(key, count = 1) {
      const now = clock();
      const failures = (current(key, now)?.failures ?? 0) + count;
      const over = failures - free;
      const lockedUntil = over > 0 ? now + Math.min(maxMs, 1000 * 2 ** Math.min(over - 1, 30)) : 0;
      entries.touch(key, { failures, last: now, lockedUntil });
    },
    get trackedKeys() {
      return entries.map.size;
    },
  };
}
