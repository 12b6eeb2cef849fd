import type pg from 'pg';
import type { ApiLimits } from '../core/config.js';
import type { Logger } from '../core/log.js';
import type { CertificateAuthority } from '../core/pki/authority.js';
import type { ApiMetrics } from './metrics.js';
import type { ReadinessCheck } from './api/health.js';
import type { TrustedProxies } from './client-certificate.js';
import type { IssuancePolicy } from './policy.js';
import type { ApiThrottle } from './throttle.js';

/** What the provisioning API runs on; tests pass real ones with test settings. */
export interface ProvisioningDeps {
  pool: pg.Pool;
  ca: CertificateAuthority;
  policy: IssuancePolicy;
  enrollmentTokenTtlMs: number;
  clock: () => Date;
  log: Logger;
  /** Connection, timeout, rate and backoff limits (FLEET_API_* in the environment). */
  limits: ApiLimits;
  metrics: ApiMetrics;
  /** Besides the database, what must be up before /healthz/ready says so (the broker, in `fleet start`). */
  readiness?: Record<string, ReadinessCheck>;
  /** A TLS-terminating proxy whose forwarded client certificates are believed; unset believes none. */
  trustedProxies?: TrustedProxies;
}

/** What routes that take credentials get besides: the one throttle of this API. */
export interface ApiDeps extends ProvisioningDeps {
  throttle: ApiThrottle;
}
