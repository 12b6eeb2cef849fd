import type { Queryable } from '../db/transaction.js';
import type { CertificateSummary } from './devices.js';

/** What a revocation checker (the OCSP responder) needs to know of one certificate. */
export interface CertificateStatus {
  serial: string;
  issuer: string;
  status: CertificateSummary['status'];
  revokedAt: Date | null;
  revocationReason: number | null;
  notAfter: Date;
}

const SELECT_STATUS_BY_SERIAL = `
  SELECT serial, issuer, status, revoked_at, revocation_reason, not_after FROM certificates WHERE serial = $1`;

/** `serial` is lower-case hex, as the registry stores it; undefined when the registry never issued it. */
export async function certificateStatusBySerial(q: Queryable, serial: string): Promise<CertificateStatus | undefined> {
  const { rows } = await q.query(SELECT_STATUS_BY_SERIAL, [serial]);
  const r = rows[0];
  if (!r) return undefined;
  return {
    serial: r.serial,
    issuer: r.issuer,
    status: r.status,
    revokedAt: r.revoked_at,
    revocationReason: r.revocation_reason,
    notAfter: r.not_after,
  };
}
