import type { Queryable } from '../db/transaction.js';
import type { CertificateStatus } from './devices.js';
import { decodeCursor, pageSize, toPage } from './page-cursor.js';

export const CERTIFICATE_STATUSES: readonly CertificateStatus[] = ['active', 'superseded', 'suspended', 'revoked'];

export interface CertificateListFilter {
  status?: CertificateStatus;
  expiringBefore?: Date;
  limit?: number;
  cursor?: string;
}

/** A line of the expiry report: which device's certificate ends when, and which CA signed it. */
export interface ListedCertificate {
  serial: string;
  deviceId: string;
  status: CertificateStatus;
  notBefore: Date;
  notAfter: Date;
  issuer: string;
}

/**
 * The expiry report in (not_after, serial) order. The cursor is the last serial of the page before:
 * its (not_after, serial) is looked up by primary key, so the page starts exactly after it.
 */
const SELECT_CERTIFICATE_PAGE = `
  SELECT serial, device_id, status, not_before, not_after, issuer FROM certificates
  WHERE ($1::text IS NULL OR (not_after, serial) > (SELECT a.not_after, a.serial FROM certificates a WHERE a.serial = $1::text))
    AND ($2::text IS NULL OR status = $2::text)
    AND ($3::timestamptz IS NULL OR not_after < $3::timestamptz)
  ORDER BY not_after, serial
  LIMIT $4`;

const CERTIFICATE_LIST = 'certificates';

export async function listCertificates(
  q: Queryable,
  filter: CertificateListFilter,
): Promise<{ certificates: ListedCertificate[]; nextCursor: string | null }> {
  const limit = pageSize(filter.limit);
  const after = decodeCursor(CERTIFICATE_LIST, filter.cursor, /^[0-9a-f]{1,64}$/);
  const { rows } = await q.query(SELECT_CERTIFICATE_PAGE, [after ?? null, filter.status ?? null, filter.expiringBefore ?? null, limit + 1]);
  const page = toPage(rows, limit, toListedCertificate, (r) => r.serial, CERTIFICATE_LIST);
  return { certificates: page.items, nextCursor: page.nextCursor };
}

const toListedCertificate = (r: Record<string, any>): ListedCertificate => ({
  serial: r.serial,
  deviceId: r.device_id,
  status: r.status,
  notBefore: r.not_before,
  notAfter: r.not_after,
  issuer: r.issuer,
});
