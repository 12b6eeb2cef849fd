import type pg from 'pg';
import { inTransaction, type Queryable } from '../db/transaction.js';
import { FleetError } from '../errors.js';
import { type Actor, recordAudit } from './audit.js';
import { recordChange } from './changes.js';
import {
  CERTIFICATE_SUMMARY_COLUMNS,
  type CertificateStatus,
  type CertificateSummary,
  type DeviceStatus,
  type IdentityKind,
  REVOCATION_REASONS,
  type RevocationReason,
  toCertificateSummary,
} from './devices.js';

/** What the registry keeps of an issued certificate. */
export interface CertificateRecord {
  serial: string;
  fingerprint: string;
  publicKeySha256: string;
  issuer: string;
  notBefore: Date;
  notAfter: Date;
  pem: string;
}

/** What the broker and the renewal flow need to decide on a TLS peer: its certificate's state and its device's. */
export interface CertificateIdentity {
  deviceId: string;
  deviceStatus: DeviceStatus;
  /** A device, or a backend service whose role the broker's policy grants fleet-wide topics to. */
  kind: IdentityKind;
  role: string | null;
  batch: string | null;
  profile: string | null;
  serial: string;
  certificateStatus: CertificateStatus;
  publicKeySha256: string;
  notBefore: Date;
  notAfter: Date;
  /** For a superseded certificate: the end of its renewal overlap. */
  acceptUntil: Date | null;
}

const INSERT_CERTIFICATE = `
  INSERT INTO certificates (serial, fingerprint, public_key_sha256, device_id, issuer, not_before, not_after, pem, created_at)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`;

const IDENTITY_COLUMNS = `
  c.device_id, d.status AS device_status, d.kind, d.role, d.batch, d.profile, c.serial, c.status AS certificate_status,
  c.public_key_sha256, c.not_before, c.not_after, c.accept_until`;

const SELECT_IDENTITY_BY_FINGERPRINT = `
  SELECT ${IDENTITY_COLUMNS} FROM certificates c JOIN devices d ON d.id = c.device_id WHERE c.fingerprint = $1`;

export const SELECT_IDENTITY_BY_FINGERPRINT_FOR_UPDATE = `${SELECT_IDENTITY_BY_FINGERPRINT} FOR UPDATE OF c, d`;

const SELECT_CERTIFICATE = `
  SELECT ${CERTIFICATE_SUMMARY_COLUMNS}, device_id, issuer, pem FROM certificates WHERE serial = $1`;

/** Held (suspended) certificates are listed too, with their certificateHold reason. */
const SELECT_REVOKED = `
  SELECT serial, revoked_at, revocation_reason FROM certificates
  WHERE status IN ('revoked', 'suspended') AND issuer = $1 ORDER BY revoked_at, serial`;

const REVOKE_ONE = `
  UPDATE certificates SET status = 'revoked', revoked_at = $2, revocation_reason = $3
  WHERE serial = $1 AND status <> 'revoked'
  RETURNING device_id`;

export async function insertCertificate(q: Queryable, deviceId: string, c: CertificateRecord, now: Date): Promise<void> {
  await q.query(INSERT_CERTIFICATE, [c.serial, c.fingerprint, c.publicKeySha256, deviceId, c.issuer, c.notBefore, c.notAfter, c.pem, now]);
}

export const toIdentity = (r: Record<string, any>): CertificateIdentity => ({
  deviceId: r.device_id,
  deviceStatus: r.device_status,
  kind: r.kind,
  role: r.role,
  batch: r.batch,
  profile: r.profile,
  serial: r.serial,
  certificateStatus: r.certificate_status,
  publicKeySha256: r.public_key_sha256,
  notBefore: r.not_before,
  notAfter: r.not_after,
  acceptUntil: r.accept_until,
});

export async function findIdentityByFingerprint(q: Queryable, fingerprint: string): Promise<CertificateIdentity | undefined> {
  const { rows } = await q.query(SELECT_IDENTITY_BY_FINGERPRINT, [fingerprint]);
  return rows[0] ? toIdentity(rows[0]) : undefined;
}

export interface CertificateDetails extends CertificateSummary {
  deviceId: string;
  /** The issuing CA's subject: which CA signed it, for revocation checkers. */
  issuer: string;
  pem: string;
}

export async function getCertificate(q: Queryable, serial: string): Promise<CertificateDetails | undefined> {
  const { rows } = await q.query(SELECT_CERTIFICATE, [serial.toLowerCase()]);
  const r = rows[0];
  if (!r) return undefined;
  return { ...toCertificateSummary(r), deviceId: r.device_id, issuer: r.issuer, pem: r.pem };
}

/**
 * Revokes one certificate, leaving its device as it is (it may hold a newer one, or be re-enrolled).
 * Sessions using that certificate are closed through the change feed.
 */
export async function revokeCertificate(
  pool: pg.Pool,
  input: { serial: string; reason: RevocationReason; actor: Actor; now: Date },
): Promise<CertificateDetails> {
  const serial = input.serial.toLowerCase();
  return inTransaction(pool, async (tx) => {
    const revoked = await tx.query(REVOKE_ONE, [serial, input.now, REVOCATION_REASONS[input.reason]]);
    const deviceId = revoked.rows[0]?.device_id as string | undefined;
    if (deviceId) {
      await recordAudit(tx, {
        actor: input.actor,
        action: 'certificate.revoked',
        deviceId,
        certificateSerial: serial,
        details: { reason: input.reason },
        at: input.now,
      });
      await recordChange(tx, { kind: 'certificate_revoked', at: input.now, targets: [{ deviceId, serial }] });
    }
    const details = await getCertificate(tx, serial);
    if (!details) throw new FleetError('certificate_not_found', 404, `no certificate with serial ${serial} was issued here`);
    return details;
  });
}

/** What `issuer` (an issuing CA's subject) has revoked or holds, for its CRL. */
export async function revokedEntries(q: Queryable, issuer: string): Promise<{ serial: string; revokedAt: Date; reason: number }[]> {
  const { rows } = await q.query(SELECT_REVOKED, [issuer]);
  return rows.map((r) => ({ serial: r.serial, revokedAt: r.revoked_at, reason: r.revocation_reason }));
}

const NEXT_CRL_NUMBER = `SELECT nextval('crl_numbers') AS n`;

export async function nextCrlNumber(q: Queryable): Promise<number> {
  const { rows } = await q.query(NEXT_CRL_NUMBER);
  return Number(rows[0].n);
}
