import type pg from 'pg';
import { type CertificateIdentity, findIdentitiesByFingerprints } from '../core/registry/index.js';
import type { ChangeFollower } from '../core/registry/index.js';
import type { IdentityCache } from './identity-cache.js';

/** How often a lookup is tried when registry changes keep arriving while it runs. */
const MAX_LOOKUP_ATTEMPTS = 3;
/** Registry queries for cache misses in flight at once; misses that arrive meanwhile wait and share the next. */
const LOOKUPS_IN_FLIGHT = 2;
/** Fingerprints asked for in one query at most. */
const LOOKUP_BATCH = 500;

/** The registry could not give an answer the broker may act on: the device is refused and retries. */
export class RegistryUnavailable extends Error {
  override name = 'RegistryUnavailable';
  constructor(
    /** 'unreachable': the query failed; 'unsettled': changes kept arriving while it ran. */
    readonly why: 'unreachable' | 'unsettled',
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

export interface IdentityResolverOptions {
  pool: pg.Pool;
  changes: Pick<ChangeFollower, 'live' | 'epoch' | 'lostSince'>;
  cache: IdentityCache;
  /** How long after the change feed was lost a cached identity may still admit a new connection. */
  staleGraceMs: number;
  now: () => number;
}

/**
 * Resolves a certificate fingerprint to its identity. While the change feed is live the cache is
 * exact, so most connects never touch the database. A lookup during which a change was delivered
 * may have read a row from before it (say, before a revocation whose sessions were already
 * closed), so it looks again; one that never settles is refused, never decided on that row. When
 * the registry cannot be reached, an identity cached as active keeps admitting for a bounded grace
 * after the feed was lost; anything else is refused (fail closed).
 */
export function identityResolver(o: IdentityResolverOptions) {
  const find = batchedLookup(o.pool);
  const lookup = async (fingerprint: string): Promise<CertificateIdentity | undefined> => {
    try {
      return await find(fingerprint);
    } catch (error) {
      const cached = o.cache.get(fingerprint);
      const lost = o.changes.lostSince;
      if (cached && lost !== undefined && o.now() - lost < o.staleGraceMs) return cached;
      throw new RegistryUnavailable('unreachable', 'the registry cannot be reached and this certificate is not cached', { cause: error });
    }
  };

  return async function resolve(fingerprint: string): Promise<CertificateIdentity | undefined> {
    if (o.changes.live) {
      const hit = o.cache.get(fingerprint);
      if (hit) return hit;
    }
    for (let attempt = 1; attempt <= MAX_LOOKUP_ATTEMPTS; attempt++) {
      const epoch = o.changes.epoch;
      const identity = await lookup(fingerprint);
      if (o.changes.epoch !== epoch) continue;
      if (identity && o.changes.live) o.cache.set(fingerprint, identity);
      return identity;
    }
    throw new RegistryUnavailable('unsettled', `registry changes kept arriving during ${MAX_LOOKUP_ATTEMPTS} lookups of this certificate`);
  };
}

interface Waiting {
  fingerprint: string;
  resolve(identity: CertificateIdentity | undefined): void;
  reject(error: unknown): void;
}

/**
 * One registry query per batch of cache misses instead of one per miss: after a broker restart every
 * device misses, and a query's round trip through the pool costs the broker about as much CPU as the
 * rest of CONNECT. A miss on a quiet broker is asked at once; during a storm, misses queue behind the
 * queries in flight and the next query takes them all. A miss still reads the row after it asked
 * (the query starts after it was queued), so the resolver's epoch check keeps its meaning.
 */
function batchedLookup(pool: pg.Pool): (fingerprint: string) => Promise<CertificateIdentity | undefined> {
  let waiting: Waiting[] = [];
  let inFlight = 0;

  const send = () => {
    while (inFlight < LOOKUPS_IN_FLIGHT && waiting.length > 0) {
      const batch = waiting.length <= LOOKUP_BATCH ? waiting : waiting.slice(0, LOOKUP_BATCH);
      waiting = batch === waiting ? [] : waiting.slice(LOOKUP_BATCH);
      inFlight++;
      findIdentitiesByFingerprints(pool, [...new Set(batch.map((w) => w.fingerprint))])
        .then(
          (found) => batch.forEach((w) => w.resolve(found.get(w.fingerprint))),
          (error: unknown) => batch.forEach((w) => w.reject(error)),
        )
        .finally(() => {
          inFlight--;
          send();
        });
    }
  };

  return (fingerprint) =>
    new Promise((resolve, reject) => {
      waiting.push({ fingerprint, resolve, reject });
      send();
    });
}
