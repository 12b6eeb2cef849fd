import type pg from 'pg';
import { type CertificateIdentity, findIdentityByFingerprint } from '../core/registry/index.js';
import type { ChangeFollower } from '../core/registry/index.js';
import type { IdentityCache } from './identity-cache.js';

/** How often a lookup is tried when registry changes keep arriving while it runs. */
const MAX_LOOKUP_ATTEMPTS = 3;

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
  changes: ChangeFollower;
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
  const lookup = async (fingerprint: string): Promise<CertificateIdentity | undefined> => {
    try {
      return await findIdentityByFingerprint(o.pool, fingerprint);
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
