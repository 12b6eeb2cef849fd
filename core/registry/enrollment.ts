import type pg from 'pg';
import { inTransaction } from '../db/transaction.js';
import { FleetError } from '../errors.js';
import type { CertificateRecord } from './certificates.js';
import { unknownEnrollmentToken } from './enrollment-tokens.js';
import { recordIssuance } from './issuance.js';
import { ENROLLMENT_TOKEN_PREFIX, hashSecret } from './secrets.js';

const SELECT_TOKEN_FOR_UPDATE = `
  SELECT t.device_id, t.expires_at, t.used_at, t.csr_sha256, t.certificate_serial, d.status AS device_status
  FROM enrollment_tokens t JOIN devices d ON d.id = t.device_id
  WHERE t.token_hash = $1
  FOR UPDATE OF t, d`;

const SELECT_ISSUED = `
  SELECT serial, fingerprint, public_key_sha256, issuer, not_before, not_after, pem, status
  FROM certificates WHERE serial = $1`;

const MARK_TOKEN_USED = `
  UPDATE enrollment_tokens SET used_at = $2, certificate_serial = $3, csr_sha256 = $4 WHERE token_hash = $1`;

const ACTIVATE_DEVICE = `UPDATE devices SET status = 'active', updated_at = $2 WHERE id = $1`;

export interface EnrollmentRequest {
  token: string;
  /** When the caller names the device (EST's HTTP Basic user), the token must belong to it. */
  deviceId?: string;
  /** SHA-256 of the CSR's DER: the same CSR sent again gets the same certificate back. */
  csrSha256: string;
  now: Date;
}

export interface EnrollmentResult {
  deviceId: string;
  certificate: CertificateRecord;
  /** True when this answered a retry with the certificate issued before. */
  replayed: boolean;
}

const toRecord = (r: Record<string, any>): CertificateRecord => ({
  serial: r.serial,
  fingerprint: r.fingerprint,
  publicKeySha256: r.public_key_sha256,
  issuer: r.issuer,
  notBefore: r.not_before,
  notAfter: r.not_after,
  pem: r.pem,
});

/**
 * Redeems a one-time enrollment token. `issue` signs the certificate for the token's device; it runs
 * inside the transaction, so the certificate row, the used token, the active device and the audit
 * entry land together, or nothing does and the token stays usable.
 */
export async function enrollWithToken(
  pool: pg.Pool,
  request: EnrollmentRequest,
  issue: (deviceId: string) => Promise<CertificateRecord>,
): Promise<EnrollmentResult> {
  if (!request.token.startsWith(ENROLLMENT_TOKEN_PREFIX)) throw unknownEnrollmentToken();
  const tokenHash = hashSecret(request.token);
  return inTransaction(pool, async (tx) => {
    const found = await tx.query(SELECT_TOKEN_FOR_UPDATE, [tokenHash]);
    const token = found.rows[0];
    if (!token || (request.deviceId !== undefined && token.device_id !== request.deviceId)) throw unknownEnrollmentToken();
    const deviceId: string = token.device_id;
    if (token.device_status === 'revoked') {
      throw new FleetError('device_revoked', 403, `device ${deviceId} is revoked and cannot enroll`);
    }
    // Enrolling must not lift a hold: an operator resumes the device first.
    if (token.device_status === 'suspended') {
      throw new FleetError('device_suspended', 403, `device ${deviceId} is suspended; an operator must resume it before it enrolls`);
    }
    if (token.used_at) {
      const replay = token.csr_sha256 === request.csrSha256 ? (await tx.query(SELECT_ISSUED, [token.certificate_serial])).rows[0] : undefined;
      if (replay && replay.status !== 'revoked') return { deviceId, certificate: toRecord(replay), replayed: true };
      throw new FleetError('token_used', 409, `this enrollment token was already used to enroll ${deviceId}; ask an operator for a new one`);
    }
    if (token.expires_at.getTime() <= request.now.getTime()) {
      throw new FleetError('token_expired', 401, `this enrollment token expired at ${token.expires_at.toISOString()}; ask an operator for a new one`);
    }
    const certificate = await issue(deviceId);
    // A device enrolled again (after an operator re-issued a token) stops using what it held before, at once.
    await recordIssuance(tx, {
      deviceId,
      certificate,
      acceptUntil: request.now,
      audit: { action: 'certificate.issued', details: { via: 'enrollment_token', notAfter: certificate.notAfter.toISOString() } },
      now: request.now,
    });
    await tx.query(MARK_TOKEN_USED, [tokenHash, request.now, certificate.serial, request.csrSha256]);
    await tx.query(ACTIVATE_DEVICE, [deviceId, request.now]);
    return { deviceId, certificate, replayed: false };
  });
}
