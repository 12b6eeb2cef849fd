import type { SecureContextOptions } from 'node:tls';
import type { CertificateAuthority } from './authority.js';

/**
 * Our TLS servers' identity and trust: the server certificate, and every issuing CA still trusted so
 * devices from before a rotation keep working. Used at start and again after a rotation.
 */
export const secureContextOptions = (ca: CertificateAuthority): SecureContextOptions => ({
  key: ca.server.keyPem,
  cert: ca.server.certificatePem,
  ca: ca.trustPem,
  minVersion: 'TLSv1.2',
});
