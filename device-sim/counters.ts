/** What one worker has counted so far; the parent adds the workers' figures up. */
export interface Counters {
  connectAttempts: number;
  connects: number;
  /** Connects whose TLS session was resumed from a ticket (no full handshake for the broker). */
  resumed: number;
  publishes: number;
  /** Telemetry the simulated link lost before it reached the broker (packet loss). */
  lostOnLink: number;
  linkDrops: number;
  renewals: number;
  renewalFailures: number;
  commandsAnswered: number;
  failures: Record<string, number>;
}

export const emptyCounters = (): Counters => ({
  connectAttempts: 0,
  connects: 0,
  resumed: 0,
  publishes: 0,
  lostOnLink: 0,
  linkDrops: 0,
  renewals: 0,
  renewalFailures: 0,
  commandsAnswered: 0,
  failures: {},
});

export function countFailure(counters: Counters, reason: string): void {
  counters.failures[reason] = (counters.failures[reason] ?? 0) + 1;
}

export function addCounters(into: Counters, from: Counters): void {
  for (const key of Object.keys(from) as (keyof Counters)[]) {
    if (key === 'failures') continue;
    into[key] += from[key];
  }
  for (const [reason, n] of Object.entries(from.failures)) into.failures[reason] = (into.failures[reason] ?? 0) + n;
}

export type DeviceState = 'waiting' | 'connecting' | 'connected' | 'renewing' | 'backoff' | 'revoked' | 'expired' | 'stopped';
export const DEVICE_STATES: DeviceState[] = ['waiting', 'connecting', 'connected', 'renewing', 'backoff', 'revoked', 'expired', 'stopped'];

export function percentile(sorted: number[], p: number): number | null {
  if (sorted.length === 0) return null;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Math.round(sorted[index]! * 10) / 10;
}

export function percentiles(samples: number[]): { p50: number | null; p95: number | null; p99: number | null; count: number } {
  const sorted = [...samples].sort((a, b) => a - b);
  return { p50: percentile(sorted, 50), p95: percentile(sorted, 95), p99: percentile(sorted, 99), count: sorted.length };
}
