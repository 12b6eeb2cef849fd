import { createHash } from 'node:crypto';
import type { HttpBindings } from '@hono/node-server';
import type { Context, MiddlewareHandler } from 'hono';
import type { ThrottleLimits } from '../core/config.js';
import { AuthenticationError, FleetError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { rateKeyOf } from '../core/net-address.js';
import { failureBackoff, tokenBuckets } from '../core/rate-limit.js';
import type { ApiMetrics } from './metrics.js';

/** What a credential is: each kind is limited on its own. */
export type CredentialKind = 'operator_token' | 'operator_session' | 'enrollment_token' | 'device' | 'certificate';

export interface ApiThrottle {
  /** Per-address rate on every request, and, on routes that take credentials, the failure backoff. */
  middleware: MiddlewareHandler<{ Bindings: HttpBindings }>;
  /** Throws 429 when this credential has been presented too often; secrets are hashed before they are kept. */
  admitCredential(kind: CredentialKind, credential: string): void;
  /** Logs (address and reason, never the credential), counts, and feeds the address's backoff. */
  failed(c: Context, reason: string, count?: number): void;
}

/** Routes that take a credential (the console's login takes an operator token); the rest (CA certificates, CRLs, OCSP, health, docs) are public. */
const takesCredentials = (path: string) => path.startsWith('/v1/') || path.startsWith('/.well-known/est/simple') || path === '/console/login';

export const clientAddress = (c: Context): string => (c.env as HttpBindings).incoming.socket.remoteAddress ?? '';

const throttledError = (code: string, detail: string, retryAfterMs: number) => {
  const retryAfter = Math.max(1, Math.ceil(retryAfterMs / 1000));
  return new FleetError(code, 429, `${detail}; retry after ${retryAfter} s`, { retryAfter });
};

export function createApiThrottle(deps: { limits: ThrottleLimits; clock: () => Date; log: Logger; metrics: ApiMetrics }): ApiThrottle {
  const { limits, log, metrics } = deps;
  const clock = () => deps.clock().getTime();
  const addresses = tokenBuckets({ perSecond: limits.addressPerSecond, burst: limits.addressBurst, clock });
  const credentials = tokenBuckets({ perSecond: limits.credentialPerSecond, burst: limits.credentialBurst, clock });
  const backoff = failureBackoff({ free: limits.authFailuresFree, maxMs: limits.authBackoffMaxMs, clock });

  const failed: ApiThrottle['failed'] = (c, reason, count = 1) => {
    const address = clientAddress(c);
    backoff.failed(rateKeyOf(address), count);
    metrics.authFailed(reason, count);
    log.warn({ address, reason, method: c.req.method, path: c.req.path, ...(count > 1 ? { count } : {}) }, 'authentication failed');
  };

  const middleware: ApiThrottle['middleware'] = async (c, next) => {
    const key = rateKeyOf(clientAddress(c));
    const limited = addresses.take(key);
    if (limited) {
      metrics.throttled('address');
      throw throttledError('rate_limited', 'too many requests from this address', limited.retryAfterMs);
    }
    if (takesCredentials(c.req.path)) {
      const locked = backoff.check(key);
      if (locked) {
        metrics.throttled('backoff');
        throw throttledError('too_many_failed_attempts', 'too many failed authentications from this address', locked.retryAfterMs);
      }
    }
    await next();
    // Every refused credential, whichever route refused it, lands here once.
    if (c.error instanceof FleetError && c.error.status === 401) {
      failed(c, c.error instanceof AuthenticationError ? c.error.reason : c.error.code);
    }
  };

  return {
    middleware,
    failed,
    admitCredential(kind, credential) {
      const digest = createHash('sha256').update(credential).digest('base64url').slice(0, 22);
      const limited = credentials.take(`${kind}:${digest}`);
      if (!limited) return;
      metrics.throttled('credential');
      throw throttledError('rate_limited', `too many requests with this ${kind.replace('_', ' ')}`, limited.retryAfterMs);
    },
  };
}
