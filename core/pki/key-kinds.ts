/** Key kinds a policy can allow. RSA means RSA of at least MIN_RSA_BITS, PKCS#1 v1.5 or PSS. */
export const KEY_KINDS = ['ec-p256', 'ec-p384', 'ed25519', 'rsa'] as const;
export type KeyKind = (typeof KEY_KINDS)[number];
export const MIN_RSA_BITS = 2048;
