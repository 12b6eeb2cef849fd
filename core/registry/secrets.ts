import { createHash, randomBytes } from 'node:crypto';

/**
 * Tokens are 256 random bits: far beyond guessing, so a plain SHA-256 is the right way to store them
 * (a slow password hash would only slow down every request). The prefix tells people what a leaked
 * string is, and lets secret scanners find it.
 */
export const ENROLLMENT_TOKEN_PREFIX = 'fleet_enroll_';
export const OPERATOR_TOKEN_PREFIX = 'fleet_op_';

export interface NewSecret {
  token: string;
  hash: Buffer;
}

export function newSecret(prefix: string): NewSecret {
  const token = prefix + randomBytes(32).toString('base64url');
  return { token, hash: hashSecret(token) };
}

export const hashSecret = (token: string): Buffer => createHash('sha256').update(token, 'utf8').digest();
