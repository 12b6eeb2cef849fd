import type pg from 'pg';
import type { CredentialGate } from '../core/http/operator-auth.js';
import type { DeviceEventFeed } from '../core/registry/index.js';
import type { Logger } from '../core/log.js';
import type { CertificateAuthority } from '../core/pki/authority.js';
import type { Scheduler } from '../core/scheduler.js';
import type { AuditEnvironment } from './audits/index.js';

/** What the dashboard API and the console run on; tests pass real ones with test settings. */
export interface DashboardDeps {
  pool: pg.Pool;
  ca: CertificateAuthority;
  clock: () => Date;
  scheduler: Scheduler;
  log: Logger;
  /** The API's throttle: a token presented here counts against the same allowance as anywhere else. */
  throttle: CredentialGate;
  /** The process's one follower of the device events, which every event stream reads from. */
  events: DeviceEventFeed;
  /** Event streams served at once; past it a new one is answered 503. */
  maxEventStreams: number;
  /** What the configuration-based audits read (key policy, key custody, metrics, logging). */
  audits: AuditEnvironment;
}
