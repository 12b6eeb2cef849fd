import { FleetError } from '../core/errors.js';
import { formatDuration, parseDuration } from '../core/duration.js';
import { CLOCK_SKEW_MS, type CertificateAuthority } from '../core/pki/authority.js';
import { describePublicKey, type KeyDescription, type KeyKind, MIN_RSA_BITS } from '../core/pki/key-kinds.js';
import { fingerprintOf, sha256Hex, x509 } from '../core/pki/x509.js';
import type { CertificateRecord } from '../core/registry/index.js';


/**
 * The issuance policy, in one place: which keys are accepted, how long certificates live, what a
 * device certificate says, and how renewal behaves. Everything in a certificate comes from here and
 * the registry; from the CSR only the public key is taken.
 */
export interface IssuancePolicy {
  allowedKeys: readonly KeyKind[];
  lifetimeMs: number;
  minLifetimeMs: number;
  maxLifetimeMs: number;
  trustDomain: string;
  /**
   * Base URL written into certificates for the CRL, OCSP and issuer download: the plain-HTTP PKI
   * listener's (FLEET_PKI_PUBLIC_URL), or the API's when that listener is off. Set once it listens.
   */
  publicUrl: string;
  renewalOverlapMs: number;
  allowKeyReuse: boolean;
  /** How long after expiry a certificate may still renew over mTLS (step-ca's allowRenewAfterExpiry); 0 never. */
  renewAfterExpiryMs: number;
}

export const defaultPolicy = (overrides: Partial<IssuancePolicy> = {}): IssuancePolicy => ({
  allowedKeys: ['ec-p256', 'ec-p384'],
  lifetimeMs: 90 * 86_400_000,
  minLifetimeMs: 5 * 60_000,
  maxLifetimeMs: 397 * 86_400_000,
  trustDomain: 'fleet.local',
  publicUrl: 'http://localhost:8080',
  renewalOverlapMs: 3_600_000,
  allowKeyReuse: false,
  renewAfterExpiryMs: 0,
  ...overrides,
});

/** Classifies a public key by its SPKI, with OpenSSL's reading of it rather than our own. */
export const describeKey = (publicKey: x509.PublicKey): KeyDescription => describePublicKey(publicKey.rawData);

const KEY_NAMES: Record<KeyKind, string> = {
  'ec-p256': 'EC P-256',
  'ec-p384': 'EC P-384',
  ed25519: 'Ed25519',
  rsa: `RSA of ${MIN_RSA_BITS} bits or more`,
};

/** Refuses keys the policy does not allow; runs before the signature check, which needs a known key. */
export function checkKey(policy: IssuancePolicy, publicKey: x509.PublicKey): void {
  const key = describeKey(publicKey);
  if (key.kind === undefined || !policy.allowedKeys.includes(key.kind)) {
    const allowed = policy.allowedKeys.map((k) => KEY_NAMES[k]).join(', ');
    throw new FleetError('key_not_allowed', 400, `the CSR carries ${key.text}; this CA accepts ${allowed}`);
  }
}

/** The CSR's subject must be exactly CN=<device id>: a CSR made for another device is a mistake worth catching. */
export function checkSubject(csr: x509.Pkcs10CertificateRequest, deviceId: string): void {
  const names = csr.subjectName.getField('CN');
  if (names.length !== 1 || names[0] !== deviceId) {
    throw new FleetError('subject_mismatch', 400, `the CSR's subject is "${csr.subject}" but must be CN=${deviceId} for this device`);
  }
}

/** A lifetime a request asks for ("12h"), held to the policy's bounds; the default when none is asked. */
export function lifetimeFor(policy: IssuancePolicy, requested: string | undefined): number {
  if (requested === undefined) return policy.lifetimeMs;
  const ms = parseDuration(requested);
  const bounds = `between ${formatDuration(policy.minLifetimeMs)} and ${formatDuration(policy.maxLifetimeMs)}`;
  if (ms === undefined) throw new FleetError('lifetime_not_allowed', 400, `"${requested}" is not a duration such as 90d or 12h; ask for one ${bounds}`);
  if (ms < policy.minLifetimeMs || ms > policy.maxLifetimeMs) {
    throw new FleetError('lifetime_not_allowed', 400, `a lifetime of ${requested} is outside this CA's bounds: ask for one ${bounds}`);
  }
  return ms;
}

export const deviceUri = (policy: IssuancePolicy, deviceId: string): string => `spiffe://${policy.trustDomain}/device/${deviceId}`;

/**
 * Where relying parties find revocation status and the issuer; written into every device certificate.
 * http:// as public CAs do (RFC 5280 4.2.1.13, 4.2.2.1): the objects are signed, and a relying party
 * must be able to fetch them before it trusts our root. The issuer's key id keeps them right after a
 * CA rotation.
 */
export const pkiUrls = (publicUrl: string, issuerKeyId: string) => ({
  crl: `${publicUrl}/pki/crl/${issuerKeyId}`,
  ocsp: `${publicUrl}/ocsp`,
  issuer: `${publicUrl}/pki/issuers/${issuerKeyId}.crt`,
});

/** Signs a device certificate from the policy's profile and returns what the registry records of it. */
export async function issueDeviceCertificate(
  ca: CertificateAuthority,
  policy: IssuancePolicy,
  request: { publicKey: x509.PublicKey; deviceId: string; lifetimeMs: number; now: Date },
): Promise<{ certificate: x509.X509Certificate; record: CertificateRecord }> {
  const { publicKey, deviceId, now } = request;
  const issuer = ca.current;
  const notAfter = Math.min(now.getTime() + request.lifetimeMs, issuer.certificate.notAfter.getTime());
  const urls = pkiUrls(policy.publicUrl, issuer.keyId);
  const certificate = await issuer.sign({
    subject: new x509.Name([{ CN: [deviceId] }]).toString(),
    publicKey,
    notBefore: new Date(now.getTime() - CLOCK_SKEW_MS),
    notAfter: new Date(notAfter),
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: deviceUri(policy, deviceId) }]),
      await x509.SubjectKeyIdentifierExtension.create(publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(issuer.certificate.publicKey),
      new x509.CRLDistributionPointsExtension([urls.crl]),
      new x509.AuthorityInfoAccessExtension({ ocsp: [new x509.GeneralName('url', urls.ocsp)], caIssuers: [new x509.GeneralName('url', urls.issuer)] }),
    ],
  });
  return { certificate, record: certificateRecord(certificate) };
}

export function certificateRecord(certificate: x509.X509Certificate): CertificateRecord {
  return {
    serial: certificate.serialNumber.toLowerCase(),
    fingerprint: fingerprintOf(certificate),
    publicKeySha256: sha256Hex(certificate.publicKey.rawData),
    keyType: describeKey(certificate.publicKey).type,
    issuer: certificate.issuer,
    notBefore: certificate.notBefore,
    notAfter: certificate.notAfter,
    pem: certificate.toString('pem'),
  };
}
