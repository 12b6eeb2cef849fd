import { X509Certificate } from 'node:crypto';
import type { IssuingCa } from './authority.js';

/** Each issuing CA's certificate as node:crypto holds it, made once. */
const parsed = new WeakMap<IssuingCa, X509Certificate>();

function nodeCertificateOf(issuer: IssuingCa): X509Certificate {
  let certificate = parsed.get(issuer);
  if (!certificate) parsed.set(issuer, (certificate = new X509Certificate(new Uint8Array(issuer.certificate.rawData))));
  return certificate;
}

/**
 * The issuing CA among `issuers` that issued this certificate: its name and key identifier match
 * the certificate's issuer, and the certificate's signature verifies under its key. Nothing else is
 * looked at (not dates, not OpenSSL's verify result, whose single error code hides the others), so
 * callers decide on expiry themselves. undefined for anything else, including bytes that are not a
 * certificate. Synchronous, so a TLS connect path can use it.
 */
export function issuingCaOf(issuers: readonly IssuingCa[], presented: X509Certificate | Uint8Array): IssuingCa | undefined {
  // Parsing costs about 0.2 ms, more than the signature check: a TLS peer's certificate comes parsed.
  const certificate = presented instanceof X509Certificate ? presented : parsedOrUndefined(presented);
  if (!certificate) return undefined;
  return issuers.find((issuer) => {
    const ca = nodeCertificateOf(issuer);
    return certificate.checkIssued(ca) && certificate.verify(ca.publicKey);
  });
}

function parsedOrUndefined(der: Uint8Array): X509Certificate | undefined {
  try {
    return new X509Certificate(der);
  } catch {
    return undefined;
  }
}
