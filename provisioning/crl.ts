import type pg from 'pg';
import type { CertificateAuthority, IssuingCa } from '../core/pki/authority.js';
import { x509 } from '../core/pki/x509.js';
import { crlIsCurrent, currentCrl, latestChangeSeq, type StoredCrl } from '../core/registry/index.js';

const CRL_VALIDITY_MS = 24 * 3_600_000;

interface Published {
  stored: StoredCrl;
  crl: x509.X509Crl;
}

/** RFC 7468 5.1: the label openssl and every other tool reads (not @peculiar/x509's "CRL"). */
export const crlPem = (crl: x509.X509Crl): string => x509.PemConverter.encode(crl.rawData, 'X509 CRL') + '\n';

/**
 * Serves each issuing CA's CRL. While the one held here is current (no registry change since, not
 * due for refresh) a request costs one read of the change number. Otherwise one request per issuer
 * goes to the registry, where the newest CRL of any process is taken or, under the registry's lock,
 * a new one is signed (see currentCrl); requests arriving meanwhile wait for that one.
 */
export function crlPublisher(pool: pg.Pool, ca: CertificateAuthority, clock: () => Date) {
  const held = new Map<string, Published>();
  const pending = new Map<string, Promise<Published>>();

  async function fetchCurrent(issuer: IssuingCa): Promise<Published> {
    const now = clock();
    const stored = await currentCrl(
      pool,
      { issuerKeyId: issuer.keyId, issuer: issuer.certificate.subject, now, refreshAfterMs: CRL_VALIDITY_MS / 2 },
      async (entries, crlNumber) => (await issuer.signCrl(entries, crlNumber, now, new Date(now.getTime() + CRL_VALIDITY_MS))).rawData,
    );
    const last = held.get(issuer.keyId);
    // Serve the highest: a slower request never puts an older CRL back.
    if (last && last.stored.crlNumber >= stored.crlNumber) return last;
    const published = { stored, crl: new x509.X509Crl(stored.der) };
    held.set(issuer.keyId, published);
    return published;
  }

  function joinOrFetch(issuer: IssuingCa): Promise<Published> {
    let running = pending.get(issuer.keyId);
    if (!running) {
      running = fetchCurrent(issuer).finally(() => pending.delete(issuer.keyId));
      pending.set(issuer.keyId, running);
    }
    return running;
  }

  return async function crlOf(issuer: IssuingCa = ca.current): Promise<x509.X509Crl> {
    const changeSeq = await latestChangeSeq(pool);
    let published = held.get(issuer.keyId);
    // A fetch already under way may have read the registry before the change this request saw.
    while (!published || !crlIsCurrent(published.stored, changeSeq, clock())) {
      published = await joinOrFetch(issuer);
      if (published.stored.changeSeq >= changeSeq) break;
    }
    return published.crl;
  };
}
