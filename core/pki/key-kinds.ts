import { createPublicKey } from 'node:crypto';
import { x509 } from './x509.js';

/** Key kinds a policy can allow. RSA means RSA of at least MIN_RSA_BITS, PKCS#1 v1.5 or PSS. */
export const KEY_KINDS = ['ec-p256', 'ec-p384', 'ed25519', 'rsa'] as const;
export type KeyKind = (typeof KEY_KINDS)[number];
export const MIN_RSA_BITS = 2048;

/**
 * What a public key is, in three forms: the policy kind it falls under (undefined when no policy
 * could allow it), a precise type the registry records at issuance ('ec-p256', 'rsa-3072',
 * 'ec-secp256k1'), and words for messages.
 */
export interface KeyDescription {
  kind: KeyKind | undefined;
  type: string;
  text: string;
}

const CURVES: Record<string, { kind: KeyKind; name: string }> = {
  prime256v1: { kind: 'ec-p256', name: 'P-256' },
  secp384r1: { kind: 'ec-p384', name: 'P-384' },
};

/** Classifies a public key by its DER SubjectPublicKeyInfo, with OpenSSL's reading of it rather than our own. */
export function describePublicKey(spki: ArrayBuffer | Uint8Array): KeyDescription {
  let key;
  try {
    key = createPublicKey({ key: Buffer.from(spki as Uint8Array), format: 'der', type: 'spki' });
  } catch {
    return { kind: undefined, type: 'unknown', text: 'a key of an unknown algorithm' };
  }
  const details = key.asymmetricKeyDetails ?? {};
  switch (key.asymmetricKeyType) {
    case 'ec': {
      const curve = CURVES[details.namedCurve ?? ''];
      if (curve) return { kind: curve.kind, type: curve.kind, text: `an EC ${curve.name} key` };
      const name = details.namedCurve ?? 'unknown-curve';
      return { kind: undefined, type: `ec-${name}`, text: `an EC ${name} key` };
    }
    case 'ed25519':
      return { kind: 'ed25519', type: 'ed25519', text: 'an Ed25519 key' };
    case 'rsa':
    case 'rsa-pss': {
      const bits = details.modulusLength ?? 0;
      return { kind: bits >= MIN_RSA_BITS ? 'rsa' : undefined, type: `rsa-${bits}`, text: `a ${bits}-bit RSA key` };
    }
    default:
      return { kind: undefined, type: key.asymmetricKeyType ?? 'unknown', text: `an ${key.asymmetricKeyType ?? 'unknown'} key` };
  }
}

/** The policy kind a recorded key type falls under ('rsa-1024' under none, 'rsa-4096' under rsa). */
export function kindOfKeyType(type: string): KeyKind | undefined {
  const rsa = /^rsa-(\d+)$/.exec(type);
  if (rsa) return Number(rsa[1]) >= MIN_RSA_BITS ? 'rsa' : undefined;
  return (KEY_KINDS as readonly string[]).includes(type) && type !== 'rsa' ? (type as KeyKind) : undefined;
}

/** The key type of a stored certificate's PEM; one that does not parse is 'unknown', which no policy allows. */
export function keyTypeOfPem(pem: string): string {
  try {
    return describePublicKey(new x509.X509Certificate(pem).publicKey.rawData).type;
  } catch {
    return 'unknown';
  }
}
