import type { Queryable } from '../db/transaction.js';
import type { DeviceStatus } from './devices.js';

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

/** What the broker needs to decide on a TLS peer: its certificate's state and its device's. */
export interface CertificateIdentity {
  deviceId: string;
  deviceStatus: DeviceStatus;
  serial: string;
  certificateStatus: 'active' | 'superseded' | 'revoked';
  notBefore: Date;
  notAfter: Date;
}

const INSERT_CERTIFICATE = `
  INSERT INTO certificates (serial, fingerprint, public_key_sha256, device_id, issuer, not_before, not_after, pem, created_at)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`;

const SELECT_IDENTITY_BY_FINGERPRINT = `
  SELECT c.device_id, d.status AS device_status, c.serial, c.status AS certificate_status, c.not_before, c.not_after
  FROM certificates c JOIN devices d ON d.id = c.device_id
  WHERE c.fingerprint = $1`;

const SELECT_REVOKED = `
  SELECT serial, revoked_at, revocation_reason FROM certificates WHERE status = 'revoked' ORDER BY revoked_at, serial`;

const SELECT_LATEST_CHANGE = `SELECT coalesce(max(seq), 0) AS seq FROM registry_changes`;

export async function insertCertificate(q: Queryable, deviceId: string, c: CertificateRecord, now: Date): Promise<void> {
  await q.query(INSERT_CERTIFICATE, [
    c.serial,
    c.fingerprint,
    c.publicKeySha256,
    deviceId,
    c.issuer,
    c.notBefore,
    c.notAfter,
    c.pem,
    now,
  ]);
}

export async function findIdentityByFingerprint(
  q: Queryable,
  fingerprint: string,
): Promise<CertificateIdentity | undefined> {
  const { rows } = await q.query(SELECT_IDENTITY_BY_FINGERPRINT, [fingerprint]);
  const r = rows[0];
  if (!r) return undefined;
  return {
    deviceId: r.device_id,
    deviceStatus: r.device_status,
    serial: r.serial,
    certificateStatus: r.certificate_status,
    notBefore: r.not_before,
    notAfter: r.not_after,
  };
}

export interface RevocationList {
  /** The registry change the list reflects: a CRL signed for an older one is out of date. */
  changeSeq: number;
  entries: { serial: string; revokedAt: Date; reason: number }[];
}

/**
 * The change number is read before the entries: a revocation landing in between only adds an entry
 * early, and the next CRL is signed for the newer change anyway.
 */
export async function revocationList(q: Queryable): Promise<RevocationList> {
  const { rows } = await q.query(SELECT_LATEST_CHANGE);
  const revoked = await q.query(SELECT_REVOKED);
  return {
    changeSeq: Number(rows[0]?.seq ?? 0),
    entries: revoked.rows.map((r) => ({ serial: r.serial, revokedAt: r.revoked_at, reason: r.revocation_reason })),
  };
}

const NEXT_CRL_NUMBER = `SELECT nextval('crl_numbers') AS n`;

export async function nextCrlNumber(q: Queryable): Promise<number> {
  const { rows } = await q.query(NEXT_CRL_NUMBER);
  return Number(rows[0].n);
}
