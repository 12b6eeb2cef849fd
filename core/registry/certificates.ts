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
  /** The key's precise type ('ec-p256', 'rsa-3072'), so audits can hold it to a policy that changed since. */
  keyType?: string;
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
  /** The subject of the issuing CA that signed the certificate, so its sessions end when that CA is retired. */
  issuer: string;
}

const INSERT_CERTIFICATE = `
  INSERT INTO certificates (serial, fingerprint, public_key_sha256, device_id, issuer, not_before, not_after, pem, created_at, key_type)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`;

const IDENTITY_COLUMNS = `
  c.device_id, d.status AS device_status, d.kind, d.role, d.batch, d.profile, c.serial, c.status AS certificate_status,
  c.public_key_sha256, c.not_before, c.not_after, c.accept_until, c.issuer`;

const SELECT_IDENTITY_BY_FINGERPRINT = `
  SELECT ${IDENTITY_COLUMNS} FROM certificates c JOIN devices d ON d.id = c.device_id WHERE c.fingerprint = $1`;

const SELECT_IDENTITIES_BY_FINGERPRINTS = `
  SELECT c.fingerprint, ${IDENTITY_COLUMNS} FROM certificates c JOIN devices d ON d.id = c.device_id WHERE c.fingerprint = ANY($1::text[])`;

export const SELECT_IDENTITY_BY_FINGERPRINT_FOR_UPDATE = `${SELECT_IDENTITY_BY_FINGERPRINT} FOR UPDATE OF c, d`;

const SELECT_CERTIFICATE = `
  SELECT ${CERTIFICATE_SUMMARY_COLUMNS}, device_id, issuer, pem FROM certificates WHERE serial = $1`;

/**
 * A certificate's revocation state at a moment ($2): the one reading OCSP and the CRL share, so they
 * never disagree. Revoked as recorded; a superseded certificate whose overlap has ended (accept_until,
 * when the broker stops accepting it) is revoked with reason superseded (4) from that moment, held or
 * not, since revocation outranks a hold; a held one (its device suspended) is on certificateHold (6).
 */
const REVOCATION_STATE = `
  CASE WHEN c.status = 'revoked' THEN 'revoked' WHEN c.accept_until <= $2 THEN 'revoked' ELSE c.status END AS status,
  CASE WHEN c.status <> 'revoked' AND c.accept_until <= $2 THEN c.accept_until ELSE c.revoked_at END AS revoked_at,
  CASE WHEN c.status <> 'revoked' AND c.accept_until <= $2 THEN 4 ELSE c.revocation_reason END AS revocation_reason`;

const SELECT_STATUS_AT = `SELECT c.issuer, c.accept_until, ${REVOCATION_STATE} FROM certificates c WHERE c.serial = $1`;

/** Held (suspended) certificates are listed too, with their certificateHold reason. */
const SELECT_REVOKED_AT = `
  SELECT serial, revoked_at, revocation_reason FROM (SELECT c.serial, ${REVOCATION_STATE} FROM certificates c WHERE c.issuer = $1) s
  WHERE status IN ('revoked', 'suspended') ORDER BY revoked_at, serial`;

/** When the next superseded certificate of this issuer reaches the end of its overlap, and so is revoked. */
const SELECT_NEXT_OVERLAP_END = `
  SELECT min(accept_until) AS at FROM certificates WHERE issuer = $1 AND status <> 'revoked' AND accept_until > $2`;

const REVOKE_ONE = `
  UPDATE certificates SET status = 'revoked', revoked_at = $2, revocation_reason = $3
  WHERE serial = $1 AND status <> 'revoked'
  RETURNING device_id`;

export async function insertCertificate(q: Queryable, deviceId: string, c: CertificateRecord, now: Date): Promise<void> {
  await q.query(INSERT_CERTIFICATE, [c.serial, c.fingerprint, c.publicKeySha256, deviceId, c.issuer, c.notBefore, c.notAfter, c.pem, now, c.keyType ?? null]);
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
  issuer: r.issuer,
});

export async function findIdentityByFingerprint(q: Queryable, fingerprint: string): Promise<CertificateIdentity | undefined> {
  const { rows } = await q.query(SELECT_IDENTITY_BY_FINGERPRINT, [fingerprint]);
  return rows[0] ? toIdentity(rows[0]) : undefined;
}

/**
 * Several identities in one round trip (the broker's cache misses during a reconnect storm), by
 * fingerprint; a fingerprint with no certificate is absent from the map.
 */
export async function findIdentitiesByFingerprints(q: Queryable, fingerprints: readonly string[]): Promise<Map<string, CertificateIdentity>> {
  const { rows } = await q.query(SELECT_IDENTITIES_BY_FINGERPRINTS, [fingerprints]);
  return new Map(rows.map((row) => [row.fingerprint as string, toIdentity(row)]));
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

/** A certificate's revocation state at `at`, as OCSP tells it. */
export interface CertificateStatusAt {
  /** The issuing CA's subject. */
  issuer: string;
  status: CertificateStatus;
  revokedAt: Date | null;
  revocationReason: number | null;
  /** For a superseded certificate still in its overlap: when it becomes revoked. */
  acceptUntil: Date | null;
}

export async function certificateStatusAt(q: Queryable, serial: string, at: Date): Promise<CertificateStatusAt | undefined> {
  const { rows } = await q.query(SELECT_STATUS_AT, [serial.toLowerCase(), at]);
  const r = rows[0];
  if (!r) return undefined;
  return { issuer: r.issuer, status: r.status, revokedAt: r.revoked_at, revocationReason: r.revocation_reason, acceptUntil: r.accept_until };
}

export interface RevocationList {
  entries: { serial: string; revokedAt: Date; reason: number }[];
  /** When this list stops being true without any registry change: the next overlap to end. */
  changesAt: Date | undefined;
}

/** What `issuer` (an issuing CA's subject) has revoked or holds at `at`, for its CRL. */
export async function revocationList(q: Queryable, issuer: string, at: Date): Promise<RevocationList> {
  const { rows } = await q.query(SELECT_REVOKED_AT, [issuer, at]);
  const next = await q.query(SELECT_NEXT_OVERLAP_END, [issuer, at]);
  return {
    entries: rows.map((r) => ({ serial: r.serial, revokedAt: r.revoked_at, reason: r.revocation_reason })),
    changesAt: next.rows[0]?.at ?? undefined,
  };
}
