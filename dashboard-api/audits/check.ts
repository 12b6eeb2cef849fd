import type pg from 'pg';
import { FleetError } from '../../core/errors.js';
import type { TrustedCaCertificates } from '../../core/pki/authority.js';
import type { KeyKind } from '../../core/pki/key-kinds.js';
import type { AuditPage, AuditPageRequest } from '../../core/registry/index.js';

export const SEVERITIES = ['low', 'medium', 'high', 'critical'] as const;
export type Severity = (typeof SEVERITIES)[number];

/** Severities that make `fleet audit` exit 1 when their check has findings. */
export const FAILING_SEVERITIES: ReadonlySet<Severity> = new Set(['high', 'critical']);

/** What the configuration-based checks read of the running fleet; cli/ wires it from the configuration. */
export interface AuditEnvironment {
  /** The issuance policy's key kinds (FLEET_ALLOWED_KEYS). */
  allowedKeys: readonly KeyKind[];
  /** The longest certificate lifetime the policy allows now (FLEET_CERT_LIFETIME_MAX). */
  maxCertificateLifetimeMs: number;
  /** Whether the CA's private key files are encrypted at rest (FLEET_CA_PASSPHRASE). */
  caKeysEncrypted: boolean;
  /** Where the CA's key files are, for the advice. */
  caKeyDir: string;
  /** Where the root CA key is when it is online; asked at each audit, so taking it offline shows at once. */
  rootKeyOnline(): boolean;
  rootKeyLocation: string;
  /** Whether the Prometheus endpoint is served (FLEET_METRICS_PORT not off). */
  metricsEnabled: boolean;
  logLevel: string;
}

/** What the checks run on: the registry, the clock, the CA's certificates and the settings above. */
export interface AuditDeps {
  pool: pg.Pool;
  clock: () => Date;
  ca: TrustedCaCertificates;
  audits: AuditEnvironment;
}

export const THRESHOLD_NAMES = ['days', 'hours', 'count'] as const;
export type ThresholdName = (typeof THRESHOLD_NAMES)[number];
export type Thresholds = Partial<Record<ThresholdName, number>>;

/** A setting a check takes as a query parameter (?days=), with its default. */
export interface Threshold {
  name: ThresholdName;
  description: string;
  min: number;
  max: number;
  default(deps: AuditDeps): number;
}

/** One finding: what it concerns and a sentence an operator acts on, plus what the check adds. */
export interface Finding {
  deviceId: string | null;
  serial: string | null;
  detail: string;
  [extra: string]: unknown;
}

export interface FindingsPage {
  findings: Finding[];
  next: string[] | null;
}

export interface AuditContext {
  deps: AuditDeps;
  now: Date;
  /** The check's thresholds: as asked, else their defaults. */
  threshold(name: ThresholdName): number;
}

export interface AuditCheck {
  id: string;
  title: string;
  severity: Severity;
  description: string;
  thresholds: readonly Threshold[];
  count(ctx: AuditContext): Promise<number>;
  findings(ctx: AuditContext, page: AuditPageRequest): Promise<FindingsPage>;
}

export const DAY_MS = 86_400_000;
export const HOUR_MS = 3_600_000;

export const daysThreshold = (description: string, fallback: (deps: AuditDeps) => number): Threshold => ({
  name: 'days',
  description,
  min: 1,
  max: 3650,
  default: fallback,
});

export const isoDate = (d: Date) => d.toISOString();
export const daysBetween = (from: Date, to: Date) => Math.floor((to.getTime() - from.getTime()) / DAY_MS);
export const plural = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

/** Turns a registry page into findings. */
export const findingsOf = <T>(page: AuditPage<T>, finding: (row: T) => Finding): FindingsPage => ({
  findings: page.rows.map(finding),
  next: page.next,
});

/**
 * A check whose findings come from what the process knows (its CA certificates, its settings), not
 * from the registry: a handful at most, so one page holds them all.
 */
export function listedCheck(
  check: Omit<AuditCheck, 'count' | 'findings' | 'thresholds'> & { thresholds?: readonly Threshold[] },
  list: (ctx: AuditContext) => Finding[],
): AuditCheck {
  return {
    ...check,
    thresholds: check.thresholds ?? [],
    count: async (ctx) => list(ctx).length,
    findings: async (ctx, page) => {
      const from = page.after ? Number(page.after[0]) : 0;
      if (page.after && (page.after.length !== 1 || !Number.isSafeInteger(from) || from < 0)) {
        throw new FleetError('validation_failed', 400, 'cursor: not a cursor this check gave out; start again without one');
      }
      const all = list(ctx);
      const to = from + page.limit;
      return { findings: all.slice(from, to), next: to < all.length ? [String(to)] : null };
    },
  };
}
