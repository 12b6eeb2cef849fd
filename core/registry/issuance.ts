import type { Queryable } from '../db/transaction.js';
import { recordAudit } from './audit.js';
import { type CertificateRecord, insertCertificate } from './certificates.js';
import { recordChange } from './changes.js';

/**
 * Marks what the new certificate replaces as superseded: one certificate (renewal), or every other
 * active certificate of the device (`$5` null: a re-enrollment). Each stays accepted until `$4`, or
 * its own expiry if sooner.
 */
const SUPERSEDE = `
  UPDATE certificates SET status = 'superseded', superseded_at = $3, accept_until = least($4, not_after), replaced_by = $2
  WHERE device_id = $1 AND status = 'active' AND serial <> $2 AND ($5::text IS NULL OR serial = $5)
  RETURNING serial`;

export interface Issuance {
  deviceId: string;
  certificate: CertificateRecord;
  /** The one certificate this replaces (renewal); unset replaces every other active one (enrollment). */
  replaces?: string;
  /** Until when a replaced certificate is still accepted: the renewal overlap, or now. */
  acceptUntil: Date;
  audit: { action: string; details: Record<string, unknown> };
  now: Date;
}

/**
 * What issuing a certificate writes, for enrollment and renewal alike, inside the caller's
 * transaction: the certificate, the ones it supersedes, a change row for each of those (so the
 * broker drops them from its cache and moves their sessions' deadlines), and the audit entry.
 * Returns the superseded serials.
 */
export async function recordIssuance(tx: Queryable, issuance: Issuance): Promise<string[]> {
  const { deviceId, certificate, now } = issuance;
  await insertCertificate(tx, deviceId, certificate, now);
  const superseded = await tx.query(SUPERSEDE, [deviceId, certificate.serial, now, issuance.acceptUntil, issuance.replaces ?? null]);
  const serials = superseded.rows.map((r) => r.serial as string);
  await recordAudit(tx, {
    actor: `device:${deviceId}`,
    action: issuance.audit.action,
    deviceId,
    certificateSerial: certificate.serial,
    details: issuance.audit.details,
    at: now,
  });
  await recordChange(tx, { kind: 'certificate_superseded', at: now, targets: serials.map((serial) => ({ deviceId, serial })) });
  return serials;
}
