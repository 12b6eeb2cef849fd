import { isDatabaseUnavailable } from '../core/db/unavailable.js';
import type { Logger } from '../core/log.js';
import type { IssuingCa } from '../core/pki/authority.js';
import type { x509 } from '../core/pki/x509.js';

export interface CrlSource {
  /**
   * The issuer's current CRL. While the registry cannot be reached, the last one signed here, as
   * long as its nextUpdate has not passed: it is signed and dated, so a relying party can judge it.
   */
  crlOf(issuer: IssuingCa): Promise<x509.X509Crl>;
  /** The last CRL signed here for this issuer and still within its validity, if there is one. */
  lastValid(issuer: IssuingCa): x509.X509Crl | undefined;
}

/** Keeps the last CRL each issuer signed, so CRL and OCSP outlive a database outage. */
export function crlSource(sign: (issuer: IssuingCa) => Promise<x509.X509Crl>, clock: () => Date, log: Logger): CrlSource {
  const last = new Map<string, x509.X509Crl>();
  const lastValid = (issuer: IssuingCa) => {
    const crl = last.get(issuer.keyId);
    return crl && (!crl.nextUpdate || clock() < crl.nextUpdate) ? crl : undefined;
  };
  return {
    lastValid,
    async crlOf(issuer) {
      try {
        const crl = await sign(issuer);
        last.set(issuer.keyId, crl);
        return crl;
      } catch (error) {
        const fallback = isDatabaseUnavailable(error) ? lastValid(issuer) : undefined;
        if (!fallback) throw error;
        log.warn({ issuer: issuer.keyId, thisUpdate: fallback.thisUpdate, reason: (error as Error).message }, 'registry unreachable: serving the last signed CRL');
        return fallback;
      }
    },
  };
}
