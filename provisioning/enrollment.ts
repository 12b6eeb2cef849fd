import { enrollWithToken } from '../core/registry/index.js';
import type { x509 } from '../core/pki/x509.js';
import { parseCsr, verifyCsrSignature } from './csr.js';
import type { ProvisioningDeps } from './deps.js';
import { checkKey, checkSubject, issueDeviceCertificate } from './policy.js';

export interface Enrollment {
  deviceId: string;
  certificate: x509.X509Certificate;
}

/**
 * CSR → policy → CA → registry. Checks that need no database run first, so a bad CSR never holds a
 * token lock; the subject check needs the token's device and runs inside the registry transaction.
 */
export async function enroll(
  deps: ProvisioningDeps,
  request: { token: string; deviceId?: string; csr: string | Uint8Array },
): Promise<Enrollment> {
  const csr = parseCsr(request.csr);
  checkKey(deps.policy, csr);
  await verifyCsrSignature(csr);
  const now = deps.clock();
  let issued: x509.X509Certificate | undefined;
  const result = await enrollWithToken(deps.pool, { token: request.token, deviceId: request.deviceId, now }, async (deviceId) => {
    checkSubject(csr, deviceId);
    const { certificate, record } = await issueDeviceCertificate(deps.ca, deps.policy, csr, deviceId, now);
    issued = certificate;
    return record;
  });
  deps.log.info({ deviceId: result.deviceId, serial: result.certificate.serial }, 'device enrolled');
  return { deviceId: result.deviceId, certificate: issued! };
}
