import { FleetError } from '../core/errors.js';
import { x509 } from '../core/pki/x509.js';
import { checkKey, type IssuancePolicy } from './policy.js';

const invalid = (detail: string) =>
  new FleetError('csr_invalid', 400, `the CSR is not a PKCS#10 certificate request: ${detail}`);

/** Accepts PEM, or base64 DER (EST's form, line breaks allowed), or raw DER bytes. */
export function parseCsr(input: string | Uint8Array): x509.Pkcs10CertificateRequest {
  let der: ArrayBuffer;
  try {
    if (typeof input === 'string') {
      const text = input.trim();
      if (text.startsWith('-----BEGIN')) {
        der = x509.PemConverter.decodeFirst(text);
      } else {
        const base64 = text.replace(/\s+/g, '');
        if (!/^[A-Za-z0-9+/]+={0,2}$/.test(base64)) throw invalid('it is neither PEM nor base64');
        der = new Uint8Array(Buffer.from(base64, 'base64')).buffer;
      }
    } else {
      der = new Uint8Array(input).buffer;
    }
  } catch (error) {
    if (error instanceof FleetError) throw error;
    throw invalid('it cannot be decoded');
  }
  if (der.byteLength === 0) throw invalid('it is empty');
  let request: x509.Pkcs10CertificateRequest;
  try {
    request = new x509.Pkcs10CertificateRequest(der);
  } catch {
    throw invalid('its DER structure does not parse');
  }
  assertDecodable(request);
  return request;
}

/**
 * The request's public key and subject are decoded lazily, on every access, and a malformed one
 * (say, an EC key whose curve is not an OID) throws a plain Error there: in the policy checks that
 * became a 500. Decoding them once here makes such a CSR what it is, csr_invalid. Well-formed keys
 * of algorithms we do not allow still decode, and are refused later as key_not_allowed.
 */
function assertDecodable(request: x509.Pkcs10CertificateRequest): void {
  try {
    void request.publicKey.algorithm;
  } catch {
    throw invalid('its public key cannot be decoded');
  }
  try {
    void request.subject;
  } catch {
    throw invalid('its subject cannot be decoded');
  }
}

/** Proof of possession: the CSR is signed by the private key of the public key it carries. */
export async function verifyCsrSignature(csr: x509.Pkcs10CertificateRequest): Promise<void> {
  let valid = false;
  try {
    valid = await csr.verify();
  } catch {
    valid = false;
  }
  if (!valid) {
    throw new FleetError('csr_signature_invalid', 400, "the CSR's signature does not verify with its own public key (proof of possession failed)");
  }
}

/** Parse, then the policy's key check, then proof of possession: what every CSR goes through. */
export async function acceptCsr(policy: IssuancePolicy, input: string | Uint8Array): Promise<x509.Pkcs10CertificateRequest> {
  const csr = parseCsr(input);
  checkKey(policy, csr.publicKey);
  await verifyCsrSignature(csr);
  return csr;
}
