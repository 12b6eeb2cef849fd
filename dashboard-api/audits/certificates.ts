import { keyTypeOfPem, kindOfKeyType } from '../../core/pki/key-kinds.js';
import {
  activeCertificatesOfIssuers,
  activeCertificatesWithKeyTypes,
  type AuditedCertificate,
  certificatesExpiring,
  certificatesIssuedBefore,
  countActiveCertificatesOfIssuers,
  countActiveCertificatesWithKeyTypes,
  countCertificatesExpiring,
  countCertificatesIssuedBefore,
  issuersOfActiveCertificates,
  keyTypesOfActiveCertificates,
  recordMissingKeyTypes,
} from '../../core/registry/index.js';
import { type AuditCheck, type AuditContext, DAY_MS, daysBetween, daysThreshold, findingsOf, type Finding, isoDate, plural } from './check.js';

/** Checks of the devices' certificates: expiry, age, their issuing CA, their keys. */

const certificateFinding = (c: AuditedCertificate, detail: string, extra: Record<string, unknown> = {}): Finding => ({
  deviceId: c.deviceId,
  serial: c.serial,
  detail,
  issuer: c.issuer,
  notBefore: isoDate(c.notBefore),
  notAfter: isoDate(c.notAfter),
  ...extra,
});

const byDays = (ctx: AuditContext, sign: 1 | -1) => new Date(ctx.now.getTime() + sign * ctx.threshold('days') * DAY_MS);

export const deviceCertificateExpiring: AuditCheck = {
  id: 'device_certificate_expiring',
  title: 'Device certificates expiring soon',
  severity: 'medium',
  description:
    'Active device certificates that expire within the threshold (?days=, default 30). A device that does not renew before then ' +
    'is refused by the broker and must be enrolled again.',
  thresholds: [daysThreshold('expiring within this many days', () => 30)],
  count: (ctx) => countCertificatesExpiring(ctx.deps.pool, ctx.now, byDays(ctx, 1)),
  findings: async (ctx, page) =>
    findingsOf(await certificatesExpiring(ctx.deps.pool, ctx.now, byDays(ctx, 1), page), (c) =>
      certificateFinding(c, `certificate ${c.serial} of ${c.deviceId} expires at ${isoDate(c.notAfter)}, in ${plural(daysBetween(ctx.now, c.notAfter), 'day')}; the device should renew it (POST /v1/renewals)`),
    ),
};

/** The policy's longest lifetime, at most a year: an active certificate older than that outlived what the policy allows now. */
export const defaultMaximumAgeDays = (maxLifetimeMs: number) => Math.max(1, Math.min(365, Math.floor(maxLifetimeMs / DAY_MS)));

export const deviceCertificateTooOld: AuditCheck = {
  id: 'device_certificate_too_old',
  title: 'Device certificates in use too long',
  severity: 'low',
  description:
    'Active device certificates issued longer ago than the threshold (?days=; default the policy\'s longest lifetime, ' +
    'FLEET_CERT_LIFETIME_MAX, at most 365). The same key in use that long is more exposed; such a certificate was issued under ' +
    'a longer lifetime than the policy allows now. Renew it.',
  thresholds: [daysThreshold('issued more than this many days ago', (deps) => defaultMaximumAgeDays(deps.audits.maxCertificateLifetimeMs))],
  count: (ctx) => countCertificatesIssuedBefore(ctx.deps.pool, ctx.now, byDays(ctx, -1)),
  findings: async (ctx, page) =>
    findingsOf(await certificatesIssuedBefore(ctx.deps.pool, ctx.now, byDays(ctx, -1), page), (c) =>
      certificateFinding(c, `certificate ${c.serial} of ${c.deviceId} was issued ${plural(daysBetween(c.notBefore, ctx.now), 'day')} ago (${isoDate(c.notBefore)}); renew it with a new key`),
    ),
};

/** Why each issuer of active certificates is a problem, for those that are: retired, or expiring within the threshold. */
async function troubledIssuers(ctx: AuditContext): Promise<Map<string, string>> {
  const trusted = new Map(ctx.deps.ca.issuers.map((i) => [i.certificate.subject, i]));
  const horizon = byDays(ctx, 1).getTime();
  const troubled = new Map<string, string>();
  for (const issuer of await issuersOfActiveCertificates(ctx.deps.pool)) {
    const ca = trusted.get(issuer);
    if (!ca) troubled.set(issuer, `${issuer} is retired (no longer trusted): the device is refused; enroll it again (fleet device reenroll)`);
    else if (ca.certificate.notAfter.getTime() <= horizon) {
      troubled.set(issuer, `issuing CA ${ca.generation} (${issuer}) expires at ${isoDate(ca.certificate.notAfter)}; rotate (fleet ca rotate) and renew the device`);
    }
  }
  return troubled;
}

export const issuerRetiredOrExpiring: AuditCheck = {
  id: 'issuer_retired_or_expiring',
  title: 'Active certificates under a retired or expiring issuing CA',
  severity: 'high',
  description:
    'Active device certificates whose issuing CA has been retired (fleet ca retire), so the broker refuses them, or expires within ' +
    'the threshold (?days=, default 90), taking them down with it.',
  thresholds: [daysThreshold('issuing CA expiring within this many days', () => 90)],
  count: async (ctx) => countActiveCertificatesOfIssuers(ctx.deps.pool, ctx.now, [...(await troubledIssuers(ctx)).keys()]),
  findings: async (ctx, page) => {
    const troubled = await troubledIssuers(ctx);
    return findingsOf(await activeCertificatesOfIssuers(ctx.deps.pool, ctx.now, [...troubled.keys()], page), (c) =>
      certificateFinding(c, `certificate ${c.serial} of ${c.deviceId}: ${troubled.get(c.issuer)}`),
    );
  },
};

/**
 * The key types below the policy. Certificates issued before the registry kept key types are
 * classified by `fleet start` in the background; each audit also records one bounded batch, so a
 * request never pays for a whole legacy registry.
 */
async function keyTypesBelowPolicy(ctx: AuditContext): Promise<string[]> {
  await recordMissingKeyTypes(ctx.deps.pool, keyTypeOfPem);
  const allowed = new Set<string>(ctx.deps.audits.allowedKeys);
  return (await keyTypesOfActiveCertificates(ctx.deps.pool)).filter((type) => !allowed.has(kindOfKeyType(type) ?? ''));
}

export const keyQuality: AuditCheck = {
  id: 'key_quality',
  title: 'Device keys below the issuance policy',
  severity: 'high',
  description:
    'Active device certificates whose key the issuance policy does not allow now (FLEET_ALLOWED_KEYS; RSA below 2048 bits never): ' +
    'issued before the policy was tightened. Renew them with an allowed key.',
  thresholds: [],
  count: async (ctx) => countActiveCertificatesWithKeyTypes(ctx.deps.pool, ctx.now, await keyTypesBelowPolicy(ctx)),
  findings: async (ctx, page) => {
    const allowed = ctx.deps.audits.allowedKeys.join(', ');
    return findingsOf(await activeCertificatesWithKeyTypes(ctx.deps.pool, ctx.now, await keyTypesBelowPolicy(ctx), page), (c) =>
      certificateFinding(c, `certificate ${c.serial} of ${c.deviceId} carries a ${c.keyType} key; the policy allows ${allowed}`, { keyType: c.keyType }),
    );
  },
};
