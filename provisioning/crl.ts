import type pg from 'pg';
import type { CertificateAuthority } from '../core/pki/authority.js';
import type { x509 } from '../core/pki/x509.js';
import { nextCrlNumber, revocationList } from '../core/registry/index.js';

const CRL_VALIDITY_MS = 24 * 3_600_000;

/**
 * Serves the current CRL. A new one (with the next CRL number) is signed when the registry has
 * changed since the last one or half its validity has passed; otherwise the last one is reused.
 */
export function crlPublisher(pool: pg.Pool, ca: CertificateAuthority, clock: () => Date) {
  let cached: { changeSeq: number; crl: x509.X509Crl; refreshAt: number } | undefined;
  return async function currentCrl(): Promise<x509.X509Crl> {
    const list = await revocationList(pool);
    const now = clock();
    if (cached && cached.changeSeq === list.changeSeq && now.getTime() < cached.refreshAt) return cached.crl;
    const nextUpdate = new Date(now.getTime() + CRL_VALIDITY_MS);
    const crl = await ca.signCrl(list.entries, await nextCrlNumber(pool), now, nextUpdate);
    cached = { changeSeq: list.changeSeq, crl, refreshAt: now.getTime() + CRL_VALIDITY_MS / 2 };
    return crl;
  };
}
