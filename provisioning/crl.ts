import type pg from 'pg';
import type { CertificateAuthority, IssuingCa } from '../core/pki/authority.js';
import type { x509 } from '../core/pki/x509.js';
import { latestChangeSeq, nextCrlNumber, revokedEntries } from '../core/registry/index.js';

const CRL_VALIDITY_MS = 24 * 3_600_000;

/**
 * Serves each issuing CA's CRL. A new one (with the next CRL number) is signed when the registry has
 * changed since the last one or half its validity has passed; otherwise the last one is reused, and
 * only the change number is read.
 */
export function crlPublisher(pool: pg.Pool, ca: CertificateAuthority, clock: () => Date) {
  const cached = new Map<string, { changeSeq: number; crl: x509.X509Crl; refreshAt: number }>();
  return async function crlOf(issuer: IssuingCa = ca.current): Promise<x509.X509Crl> {
    // Read before the entries: a revocation landing in between only adds an entry early, and the
    // next CRL is signed for the newer change anyway.
    const changeSeq = await latestChangeSeq(pool);
    const now = clock();
    const last = cached.get(issuer.keyId);
    if (last && last.changeSeq === changeSeq && now.getTime() < last.refreshAt) return last.crl;
    const entries = await revokedEntries(pool, issuer.certificate.subject);
    const crl = await issuer.signCrl(entries, await nextCrlNumber(pool), now, new Date(now.getTime() + CRL_VALIDITY_MS));
    cached.set(issuer.keyId, { changeSeq, crl, refreshAt: now.getTime() + CRL_VALIDITY_MS / 2 });
    return crl;
  };
}
