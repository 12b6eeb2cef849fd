import type pg from 'pg';
import type { Logger } from '../core/log.js';
import type { CertificateAuthority } from '../core/pki/authority.js';
import type { ReadinessCheck } from './api/health.js';
import type { TrustedProxies } from './client-certificate.js';
import type { IssuancePolicy } from './policy.js';

/** What the provisioning API runs on; tests pass real ones with test settings. */
export interface ProvisioningDeps {
  pool: pg.Pool;
  ca: CertificateAuthority;
  policy: IssuancePolicy;
  enrollmentTokenTtlMs: number;
  clock: () => Date;
  log: Logger;
  /** Besides the database, what must be up before /healthz/ready says so (the broker, in `fleet start`). */
  readiness?: Record<string, ReadinessCheck>;
  /** A TLS-terminating proxy whose forwarded client certificates are believed; unset believes none. */
  trustedProxies?: TrustedProxies;
}
