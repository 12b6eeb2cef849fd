import { Counter, type Registry } from 'prom-client';
import type { DroppedReason } from '../core/http/server-limits.js';

export type ThrottleLimit = 'address' | 'credential' | 'backoff';

/** What the provisioning API tells Prometheus, registered on the registry the process serves. */
export interface ApiMetrics {
  /** Refused credentials; `reason` comes from a closed set (each value is a series). */
  authFailed(reason: string, count?: number): void;
  throttled(limit: ThrottleLimit): void;
  dropped(reason: DroppedReason): void;
}

export function createApiMetrics(registry: Registry): ApiMetrics {
  const failures = new Counter({
    name: 'fleet_api_auth_failures_total',
    help: 'Refused credentials at the provisioning API, by reason (unknown, expired or revoked tokens, bad EST credentials, client certificates).',
    labelNames: ['reason'] as const,
    registers: [registry],
  });
  const throttled = new Counter({
    name: 'fleet_api_throttled_total',
    help: 'Requests answered 429, by the limit that applied: per address, per credential, or backoff after failed authentication.',
    labelNames: ['limit'] as const,
    registers: [registry],
  });
  const dropped = new Counter({
    name: 'fleet_api_dropped_connections_total',
    help: 'Connections closed by the API: over the connection cap, or a body arriving below the minimum rate.',
    labelNames: ['reason'] as const,
    registers: [registry],
  });
  // Every series exists from the start, so a rate() over it is 0 rather than absent.
  for (const limit of ['address', 'credential', 'backoff'] as const) throttled.inc({ limit }, 0);
  for (const reason of ['too_many_connections', 'slow_body'] as const) dropped.inc({ reason }, 0);
  return {
    authFailed: (reason, count = 1) => failures.inc({ reason }, count),
    throttled: (limit) => throttled.inc({ limit }),
    dropped: (reason) => dropped.inc({ reason }),
  };
}

