import { FleetError } from '../core/errors.js';
import { sha256Hex, x509 } from '../core/pki/x509.js';
import { enrollWithToken, knownEnrollmentTokens, type PresentedToken, renewCertificate, unknownEnrollmentToken } from '../core/registry/index.js';
import { acceptCsr } from './csr.js';
import type { ApiDeps, ProvisioningDeps } from './deps.js';
import { checkSubject, issueDeviceCertificate, lifetimeFor } from './policy.js';

export interface Issued {
  deviceId: string;
  certificate: x509.X509Certificate;
  /** A retried enrollment answered with the certificate issued the first time. */
  replayed: boolean;
  /** For a renewal: the certificate this one supersedes. */
  previousSerial?: string;
}

export interface CsrSubmission {
  csr: string | Uint8Array;
  /** A lifetime the caller asks for, such as "30d"; held to the policy's bounds. */
  lifetime?: string;
}

/** The signing step both flows share: the subject must name the device, the rest is the policy's. */
function signerFor(deps: ProvisioningDeps, csr: x509.Pkcs10CertificateRequest, lifetimeMs: number, now: Date) {
  return async (deviceId: string) => {
    checkSubject(csr, deviceId);
    const issued = await issueDeviceCertificate(deps.ca, deps.policy, { publicKey: csr.publicKey, deviceId, lifetimeMs, now });
    return issued.record;
  };
}

/**
 * The cheap checks an enrollment passes before its CSR is even parsed: each credential within its
 * rate, then each token known (one lookup by hash for all of them). Answers, per token, the refusal
 * or undefined; the expensive work is left for tokens we issued.
 */
export async function screenEnrollmentTokens(deps: ApiDeps, presented: PresentedToken[]): Promise<(FleetError | undefined)[]> {
  const refusals = presented.map((p) => {
    try {
      if (p.deviceId !== undefined) deps.throttle.admitCredential('device', p.deviceId);
      deps.throttle.admitCredential('enrollment_token', p.token);
      return undefined;
    } catch (error) {
      if (error instanceof FleetError) return error;
      throw error;
    }
  });
  const admitted = presented.filter((_, i) => !refusals[i]);
  const known = await knownEnrollmentTokens(deps.pool, admitted);
  let next = 0;
  return refusals.map((refusal) => refusal ?? (known[next++] ? undefined : unknownEnrollmentToken()));
}

/** Enrollment with one token: screened first, so an unknown token never costs a CSR verification. */
export async function enroll(deps: ApiDeps, request: CsrSubmission & PresentedToken): Promise<Issued> {
  const [refusal] = await screenEnrollmentTokens(deps, [request]);
  if (refusal) throw refusal;
  return enrollScreened(deps, request);
}

/**
 * CSR → policy → CA → registry, for a factory or device holding a one-time token that passed
 * screening. Checks that need no database run first, so a bad CSR never holds a token lock.
 */
export async function enrollScreened(deps: ProvisioningDeps, request: CsrSubmission & PresentedToken): Promise<Issued> {
  const csr = await acceptCsr(deps.policy, request.csr);
  const lifetimeMs = lifetimeFor(deps.policy, request.lifetime);
  const now = deps.clock();
  const result = await enrollWithToken(
    deps.pool,
    { token: request.token, deviceId: request.deviceId, csrSha256: sha256Hex(csr.rawData), now },
    signerFor(deps, csr, lifetimeMs, now),
  );
  deps.log.info({ deviceId: result.deviceId, serial: result.certificate.serial, replayed: result.replayed }, 'device enrolled');
  return { deviceId: result.deviceId, certificate: new x509.X509Certificate(result.certificate.pem), replayed: result.replayed };
}

/**
 * Renewal over mTLS: the presented certificate proves the device (`presented`, as clientCertificateOf
 * found and checked it, directly or from a trusted proxy), the CSR carries its new key.
 */
/** Renewal's cheap checks, before the body is read: the presented certificate within its rate. */
export function screenRenewal(deps: ApiDeps, presented: { fingerprint: string }): void {
  deps.throttle.admitCredential('certificate', presented.fingerprint);
}

export async function renew(deps: ProvisioningDeps, presented: { fingerprint: string }, request: CsrSubmission): Promise<Issued> {
  const { fingerprint } = presented;
  const csr = await acceptCsr(deps.policy, request.csr);
  const lifetimeMs = lifetimeFor(deps.policy, request.lifetime);
  const now = deps.clock();
  const result = await renewCertificate(
    deps.pool,
    {
      fingerprint,
      newKeySha256: sha256Hex(csr.publicKey.rawData),
      allowKeyReuse: deps.policy.allowKeyReuse,
      overlapMs: deps.policy.renewalOverlapMs,
      renewAfterExpiryMs: deps.policy.renewAfterExpiryMs,
      now,
    },
    signerFor(deps, csr, lifetimeMs, now),
  );
  deps.log.info({ deviceId: result.deviceId, serial: result.certificate.serial, previous: result.previousSerial }, 'certificate renewed');
  return {
    deviceId: result.deviceId,
    certificate: new x509.X509Certificate(result.certificate.pem),
    replayed: false,
    previousSerial: result.previousSerial,
  };
}
