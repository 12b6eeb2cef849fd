import { FleetError } from '../core/errors.js';
import { CLOCK_SKEW_MS, type CertificateAuthority } from '../core/pki/authority.js';
import { fingerprintOf, sha256Hex, x509 } from '../core/pki/x509.js';
import type { CertificateRecord } from '../core/registry/index.js';

/**
 * The issuance policy: which keys are accepted and what a device certificate says. Everything in the
 * certificate comes from here and the registry; from the CSR only the public key is taken.
 */
export interface IssuancePolicy {
  lifetimeMs: number;
  trustDomain: string;
  allowedCurves: readonly string[];
}

export const defaultPolicy = (overrides: Partial<IssuancePolicy> = {}): IssuancePolicy => ({
  lifetimeMs: 90 * 86_400_000,
  trustDomain: 'fleet.local',
  allowedCurves: ['P-256', 'P-384'],
  ...overrides,
});

export function describeKey(publicKey: x509.PublicKey): string {
  try {
    const algorithm = publicKey.algorithm as { name: string; namedCurve?: string; modulusLength?: number };
    if (algorithm.namedCurve) return `${algorithm.name} ${algorithm.namedCurve}`;
    if (algorithm.modulusLength) return `${algorithm.name} ${algorithm.modulusLength}-bit`;
    return algorithm.name;
  } catch {
    return 'an unrecognised algorithm';
  }
}

/** Refuses keys the policy does not allow; runs before the signature check, which needs a known key. */
export function checkKey(policy: IssuancePolicy, csr: x509.Pkcs10CertificateRequest): void {
  let curve: string | undefined;
  try {
    const algorithm = csr.publicKey.algorithm as { name: string; namedCurve?: string };
    curve = algorithm.name === 'ECDSA' ? algorithm.namedCurve : undefined;
  } catch {
    curve = undefined;
  }
  if (curve === undefined || !policy.allowedCurves.includes(curve)) {
    throw new FleetError(
      'key_not_allowed',
      400,
      `the CSR carries ${describeKey(csr.publicKey)}; allowed keys are EC ${policy.allowedCurves.join(' or ')}`,
    );
  }
}

/** The CSR's subject must be exactly CN=<device id>: a CSR made for another device is a mistake worth catching. */
export function checkSubject(csr: x509.Pkcs10CertificateRequest, deviceId: string): void {
  const names = csr.subjectName.getField('CN');
  if (names.length !== 1 || names[0] !== deviceId) {
    throw new FleetError(
      'subject_mismatch',
      400,
      `the CSR's subject is "${csr.subject}" but must be CN=${deviceId} for this device`,
    );
  }
}

export const deviceUri = (policy: IssuancePolicy, deviceId: string): string =>
  `spiffe://${policy.trustDomain}/device/${deviceId}`;

/** Signs a device certificate from the policy's profile and returns what the registry records of it. */
export async function issueDeviceCertificate(
  ca: CertificateAuthority,
  policy: IssuancePolicy,
  csr: x509.Pkcs10CertificateRequest,
  deviceId: string,
  now: Date,
): Promise<{ certificate: x509.X509Certificate; record: CertificateRecord }> {
  const notAfter = Math.min(now.getTime() + policy.lifetimeMs, ca.issuing.notAfter.getTime());
  const certificate = await ca.sign({
    subject: new x509.Name([{ CN: [deviceId] }]).toString(),
    publicKey: csr.publicKey,
    notBefore: new Date(now.getTime() - CLOCK_SKEW_MS),
    notAfter: new Date(notAfter),
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: deviceUri(policy, deviceId) }]),
      await x509.SubjectKeyIdentifierExtension.create(csr.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(ca.issuing.publicKey),
    ],
  });
  return { certificate, record: certificateRecord(certificate) };
}

export function certificateRecord(certificate: x509.X509Certificate): CertificateRecord {
  return {
    serial: certificate.serialNumber.toLowerCase(),
    fingerprint: fingerprintOf(certificate),
    publicKeySha256: sha256Hex(certificate.publicKey.rawData),
    issuer: certificate.issuer,
    notBefore: certificate.notBefore,
    notAfter: certificate.notAfter,
    pem: certificate.toString('pem'),
  };
}
