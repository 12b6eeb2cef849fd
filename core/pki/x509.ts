// @peculiar/x509 needs the Reflect metadata polyfill loaded once, before its first use.
import 'reflect-metadata';
import { createHash, randomBytes, webcrypto } from 'node:crypto';
import type { AlgorithmIdentifier } from '@peculiar/asn1-x509';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

export { x509 };
export const subtle = webcrypto.subtle as unknown as SubtleCrypto;

export type EcCurve = 'P-256' | 'P-384';

const HASH_FOR_CURVE: Record<EcCurve, string> = { 'P-256': 'SHA-256', 'P-384': 'SHA-384' };

export const ecKeyAlgorithm = (curve: EcCurve) => ({ name: 'ECDSA', namedCurve: curve });
export const ecSigningAlgorithm = (curve: EcCurve) => ({ name: 'ECDSA', hash: HASH_FOR_CURVE[curve] });

export function generateEcKeys(curve: EcCurve, extractable = true): Promise<CryptoKeyPair> {
  return subtle.generateKey(ecKeyAlgorithm(curve), extractable, ['sign', 'verify']) as Promise<CryptoKeyPair>;
}

export function sha256Hex(data: ArrayBuffer | Uint8Array): string {
  return createHash('sha256').update(new Uint8Array(data)).digest('hex');
}

/** The certificate's SHA-256 fingerprint: the same value Node reports as fingerprint256, in lower-case hex. */
export const fingerprintOf = (certificate: x509.X509Certificate): string => sha256Hex(certificate.rawData);

/** Node's peer certificate reports "AB:CD:…"; the registry stores "abcd…". */
export const normalizeFingerprint = (fingerprint: string): string => fingerprint.replaceAll(':', '').toLowerCase();

/** A positive 127-bit random serial (the high bit is clear so DER needs no sign byte). */
export function randomSerial(): string {
  const bytes = randomBytes(16);
  bytes[0] = bytes[0]! & 0x7f || 0x01;
  return bytes.toString('hex');
}

export async function exportPrivateKeyPem(key: CryptoKey): Promise<string> {
  const der = await subtle.exportKey('pkcs8', key);
  return x509.PemConverter.encode(der, 'PRIVATE KEY');
}

export async function importEcPrivateKeyPem(pem: string, curve: EcCurve): Promise<CryptoKey> {
  const der = x509.PemConverter.decodeFirst(pem);
  return subtle.importKey('pkcs8', der, ecKeyAlgorithm(curve), false, ['sign']);
}

export const pemChain = (...certificates: x509.X509Certificate[]): string =>
  certificates.map((c) => c.toString('pem')).join('\n') + '\n';

/** The AlgorithmIdentifier that names a webcrypto signing algorithm in DER (ecdsa-with-SHA256 for ECDSA/SHA-256). */
export const signatureAlgorithmIdentifier = (algorithm: Algorithm): AlgorithmIdentifier =>
  new x509.AlgorithmProvider().toAsnAlgorithm(algorithm);

/** Webcrypto gives an ECDSA signature as raw r||s; X.509, CRLs and OCSP carry it as a DER ECDSA-Sig-Value. */
export function ecdsaSignatureToDer(curve: EcCurve, raw: ArrayBuffer): ArrayBuffer {
  const der = new x509.AsnEcSignatureFormatter().toAsnSignature(ecKeyAlgorithm(curve), raw);
  if (!der) throw new Error(`cannot encode an ECDSA signature on ${curve}`);
  return der;
}
