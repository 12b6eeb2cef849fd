import type pg from 'pg';
import { inTransaction } from '../db/transaction.js';
import { formatDuration } from '../duration.js';
import { FleetError } from '../errors.js';
import { type CertificateIdentity, type CertificateRecord, SELECT_IDENTITY_BY_FINGERPRINT_FOR_UPDATE, toIdentity } from './certificates.js';
import { recordIssuance } from './issuance.js';

const KEY_USED_BEFORE = `SELECT 1 FROM certificates WHERE device_id = $1 AND public_key_sha256 = $2 LIMIT 1`;

export interface RenewalRequest {
  /** SHA-256 fingerprint of the certificate the device presented at the TLS layer. */
  fingerprint: string;
  /** SHA-256 of the new public key (its SPKI DER). */
  newKeySha256: string;
  allowKeyReuse: boolean;
  /** How long the old certificate stays accepted after renewal. */
  overlapMs: number;
  /** How long after its expiry a certificate may still renew; 0 never. */
  renewAfterExpiryMs: number;
  now: Date;
}

/** Why a presented certificate may not renew; the device must then be re-enrolled by an operator. */
function refuseRenewal(identity: CertificateIdentity | undefined, now: Date, renewAfterExpiryMs: number): FleetError | undefined {
  const reenroll = 'an operator must re-enroll the device (fleet device reenroll)';
  if (!identity) return new FleetError('certificate_unknown', 401, `the client certificate is not in the registry; ${reenroll}`);
  if (identity.certificateStatus === 'revoked' || identity.deviceStatus === 'revoked') {
    return new FleetError('certificate_revoked', 403, `the client certificate is revoked and cannot renew`);
  }
  if (identity.certificateStatus === 'suspended' || identity.deviceStatus === 'suspended') {
    return new FleetError('device_suspended', 403, `device ${identity.deviceId} is suspended; an operator must resume it first`);
  }
  if (identity.certificateStatus === 'superseded') {
    return new FleetError('certificate_superseded', 409, 'this certificate was already renewed; renew with the newest certificate');
  }
  // Past here the certificate is active, so never revoked and the newest of its device: enrollment
  // and renewal supersede every other one. Such a certificate may renew within the grace after expiry.
  const late = now.getTime() - identity.notAfter.getTime();
  if (late >= 0 && !(renewAfterExpiryMs > 0 && late <= renewAfterExpiryMs)) {
    const grace = renewAfterExpiryMs > 0 ? `, longer ago than renewal after expiry allows (${formatDuration(renewAfterExpiryMs)})` : '';
    return new FleetError('certificate_expired', 401, `the client certificate expired at ${identity.notAfter.toISOString()}${grace}; ${reenroll}`);
  }
  return undefined;
}

/**
 * Renews the certificate a device presented over mTLS. `issue` signs the new certificate inside the
 * transaction; the old one becomes superseded and stays accepted until the overlap ends (or it
 * expires, whichever is first).
 */
export async function renewCertificate(
  pool: pg.Pool,
  request: RenewalRequest,
  issue: (deviceId: string) => Promise<CertificateRecord>,
): Promise<{ deviceId: string; certificate: CertificateRecord; previousSerial: string }> {
  return inTransaction(pool, async (tx) => {
    const row = (await tx.query(SELECT_IDENTITY_BY_FINGERPRINT_FOR_UPDATE, [request.fingerprint])).rows[0];
    const identity = row ? toIdentity(row) : undefined;
    const refusal = refuseRenewal(identity, request.now, request.renewAfterExpiryMs);
    if (refusal) throw refusal;
    const { deviceId, serial: previousSerial } = identity!;
    if (!request.allowKeyReuse && (await tx.query(KEY_USED_BEFORE, [deviceId, request.newKeySha256])).rowCount) {
      throw new FleetError('key_reused', 400, 'the CSR carries a key this device has used before; renew with a newly generated key');
    }
    const certificate = await issue(deviceId);
    const acceptUntil = new Date(request.now.getTime() + request.overlapMs);
    await recordIssuance(tx, {
      deviceId,
      certificate,
      replaces: previousSerial,
      acceptUntil,
      audit: {
        action: 'certificate.renewed',
        details: { previousSerial, previousAcceptedUntil: acceptUntil.toISOString(), notAfter: certificate.notAfter.toISOString() },
      },
      now: request.now,
    });
    return { deviceId, certificate, previousSerial };
  });
}
