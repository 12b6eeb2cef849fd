import { createPublicKey } from 'node:crypto';
import { type EcCurve, ecKeyAlgorithm, ecSigningAlgorithm, importEcPrivateKeyPem, subtle, x509 } from './x509.js';

/**
 * A CA key as the CA uses it: something that signs, and its public half. Where the private key is
 * (a file read into memory, a PKCS#11 token it never leaves) is the key store's business.
 */
export interface CaSigner {
  readonly curve: EcCurve;
  readonly publicKey: x509.PublicKey;
  /** Where the private key is kept, for messages: never the key itself. */
  readonly location: string;
  /** ECDSA with the curve's hash over data, as WebCrypto gives it (raw r||s). */
  sign(data: ArrayBuffer): Promise<ArrayBuffer>;
}

/** A signer over a private key held in this process as PEM (a key file). */
export async function pemSigner(pem: string, curve: EcCurve, location: string): Promise<CaSigner> {
  const key = await importEcPrivateKeyPem(pem, curve);
  const spki = createPublicKey(pem).export({ type: 'spki', format: 'der' });
  const algorithm = ecSigningAlgorithm(curve);
  return {
    curve,
    publicKey: new x509.PublicKey(new Uint8Array(spki)),
    location,
    sign: (data) => subtle.sign(algorithm, key, data),
  };
}

/** Whether the signer holds the private half of the certificate's public key. */
export const signerMatches = (signer: CaSigner, certificate: x509.X509Certificate): boolean =>
  Buffer.from(signer.publicKey.rawData).equals(Buffer.from(certificate.publicKey.rawData));

/** What @peculiar/x509's generators sign with. */
export interface X509Signing {
  crypto: Crypto;
  signingKey: CryptoKey;
  signingAlgorithm: EcdsaParams;
}

/**
 * The signer as @peculiar/x509 wants it: a WebCrypto whose `sign` with the stand-in key goes to the
 * signer, and whose every other operation (digests, exporting the subject's public key) is this
 * process's WebCrypto. So one code path signs certificates, CRLs and CSRs whatever holds the key.
 */
export function x509Signing(signer: CaSigner): X509Signing {
  const signingKey = { type: 'private', extractable: false, algorithm: ecKeyAlgorithm(signer.curve), usages: ['sign'] } as unknown as CryptoKey;
  const facade = new Proxy(subtle, {
    get(target, property) {
      if (property === 'sign') {
        return (algorithm: AlgorithmIdentifier, key: CryptoKey, data: BufferSource) =>
          key === signingKey ? signer.sign(toArrayBuffer(data)) : target.sign(algorithm, key, data);
      }
      const value = Reflect.get(target, property, target) as unknown;
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
  const crypto = { subtle: facade, getRandomValues: globalThis.crypto.getRandomValues.bind(globalThis.crypto) } as unknown as Crypto;
  return { crypto, signingKey, signingAlgorithm: ecSigningAlgorithm(signer.curve) };
}

function toArrayBuffer(data: BufferSource): ArrayBuffer {
  const view = ArrayBuffer.isView(data) ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : new Uint8Array(data);
  return view.slice().buffer;
}
