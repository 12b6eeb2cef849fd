import { FleetError } from '../../core/errors.js';
import { deviceCertificateExpiring, deviceCertificateTooOld, issuerRetiredOrExpiring, keyQuality } from './certificates.js';
import { caCertificateExpiring, caPassphraseUnset, rootKeyOnline } from './ca.js';
import { type AuditCheck, type AuditContext, type AuditDeps, type Finding, type Severity, THRESHOLD_NAMES, type ThresholdName, type Thresholds } from './check.js';
import { certificateShared, conflictingClientIdsCheck, neverSeen, revokedCertificateConnected } from './sessions.js';
import { metricsDisabled } from './settings.js';

export { type AuditDeps, type AuditEnvironment, FAILING_SEVERITIES, SEVERITIES, type Severity } from './check.js';
export { defaultMaximumAgeDays } from './certificates.js';

/** Every check, in the order the list shows them: the fleet's security audits, after AWS IoT Device Defender's. */
export const AUDIT_CHECKS: readonly AuditCheck[] = [
  deviceCertificateExpiring,
  deviceCertificateTooOld,
  caCertificateExpiring,
  certificateShared,
  conflictingClientIdsCheck,
  revokedCertificateConnected,
  issuerRetiredOrExpiring,
  keyQuality,
  neverSeen,
  rootKeyOnline,
  caPassphraseUnset,
  metricsDisabled,
];

export const AUDIT_CHECK_IDS = AUDIT_CHECKS.map((c) => c.id);

export interface AuditSummary {
  check: string;
  title: string;
  severity: Severity;
  description: string;
  findings: number;
  ok: boolean;
}

export interface AuditResult {
  check: string;
  title: string;
  severity: Severity;
  description: string;
  /** The thresholds this answer used, given or default. */
  thresholds: Thresholds;
  findings: Finding[];
  nextCursor: string | null;
}

function findCheck(id: string): AuditCheck {
  const check = AUDIT_CHECKS.find((c) => c.id === id);
  if (!check) throw new FleetError('audit_check_not_found', 404, `there is no audit check "${id}"; the checks are: ${AUDIT_CHECK_IDS.join(', ')}`);
  return check;
}

/** Thresholds asked for, checked against what the check takes; the rest take their defaults. */
function contextFor(check: AuditCheck, deps: AuditDeps, asked: Thresholds): AuditContext {
  const values: Thresholds = {};
  for (const name of THRESHOLD_NAMES) {
    const value = asked[name];
    const threshold = check.thresholds.find((t) => t.name === name);
    if (value === undefined) {
      if (threshold) values[name] = threshold.default(deps);
      continue;
    }
    if (!threshold) {
      const takes = check.thresholds.length > 0 ? `it takes ${check.thresholds.map((t) => t.name).join(', ')}` : 'it takes none';
      throw new FleetError('validation_failed', 400, `${name}: check ${check.id} takes no ${name} threshold; ${takes}`);
    }
    if (!Number.isInteger(value) || value < threshold.min || value > threshold.max) {
      throw new FleetError('validation_failed', 400, `${name}: ${threshold.description} must be a whole number from ${threshold.min} to ${threshold.max}`);
    }
    values[name] = value;
  }
  return { deps, now: deps.clock(), threshold: (name: ThresholdName) => values[name]! };
}

/** Every check with its number of findings at its default thresholds. */
export async function auditSummaries(deps: AuditDeps): Promise<{ at: Date; audits: AuditSummary[] }> {
  const at = deps.clock();
  const audits = await Promise.all(
    AUDIT_CHECKS.map(async (check) => {
      const findings = await check.count({ ...contextFor(check, deps, {}), now: at });
      const { id, title, severity, description } = check;
      return { check: id, title, severity, description, findings, ok: findings === 0 };
    }),
  );
  return { at, audits };
}

export const MAX_PAGE = 500;

/** One page of one check's findings. */
export async function auditFindings(
  deps: AuditDeps,
  checkId: string,
  request: { thresholds?: Thresholds; limit: number; cursor?: string },
): Promise<AuditResult> {
  const check = findCheck(checkId);
  if (!Number.isInteger(request.limit) || request.limit < 1 || request.limit > MAX_PAGE) {
    throw new FleetError('validation_failed', 400, `limit: must be a whole number from 1 to ${MAX_PAGE}`);
  }
  const ctx = contextFor(check, deps, request.thresholds ?? {});
  const page = await check.findings(ctx, { limit: request.limit, after: request.cursor === undefined ? undefined : decodeCursor(request.cursor) });
  const thresholds = Object.fromEntries(check.thresholds.map((t) => [t.name, ctx.threshold(t.name)]));
  const { id, title, severity, description } = check;
  return { check: id, title, severity, description, thresholds, findings: page.findings, nextCursor: page.next ? encodeCursor(page.next) : null };
}

/** Opaque to clients: the key of the last finding shown. */
const encodeCursor = (key: string[]) => Buffer.from(JSON.stringify(key)).toString('base64url');

function decodeCursor(cursor: string): string[] {
  const invalid = new FleetError('validation_failed', 400, 'cursor: not a cursor this check gave out; start again without one');
  if (!/^[A-Za-z0-9_-]{1,2048}$/.test(cursor)) throw invalid;
  let key: unknown;
  try {
    key = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    throw invalid;
  }
  if (!Array.isArray(key) || key.length === 0 || key.length > 3 || !key.every((k) => typeof k === 'string')) throw invalid;
  return key;
}
