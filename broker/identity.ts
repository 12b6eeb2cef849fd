import type pg from 'pg';
import { type CertificateIdentity, findIdentityByFingerprint } from '../core/registry/index.js';
import type { ChangeFollower } from '../core/registry/index.js';
import type { IdentityCache } from './identity-cache.js';

/** How often a lookup is retried when registry changes keep arriving while it runs. */
const MAX_LOOKUP_ATTEMPTS = 3;

export class RegistryUnavailable extends Error {
  override name = 'RegistryUnavailable';
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
 * exact, so most connects never touch the database. A lookup that raced a change looks again.
 * When the registry cannot be reached, an identity cached as active keeps admitting for a bounded
 * grace after the feed was lost; anything else is refused (fail closed).
 */
export function identityResolver(o: IdentityResolverOptions) {
  return async function resolve(fingerprint: string): Promise<CertificateIdentity | undefined> {
    if (o.changes.live) {
      const hit = o.cache.get(fingerprint);
      if (hit) return hit;
    }
    try {
      for (let attempt = 1; ; attempt++) {
        const epoch = o.changes.epoch;
        const identity = await findIdentityByFingerprint(o.pool, fingerprint);
        const settled = o.changes.epoch === epoch;
        if (settled && identity && o.changes.live) o.cache.set(fingerprint, identity);
        if (settled || attempt === MAX_LOOKUP_ATTEMPTS) return identity;
      }
    } catch (error) {
      const cached = o.cache.get(fingerprint);
      const lost = o.changes.lostSince;
      if (cached && lost !== undefined && o.now() - lost < o.staleGraceMs) return cached;
      throw new RegistryUnavailable('the registry cannot be reached and this certificate is not cached', { cause: error });
    }
  };
}
