import type { TLSSocket } from 'node:tls';
import { FleetError } from '../core/errors.js';
import type { IssuingCa } from '../core/pki/authority.js';
import { issuingCaOf } from '../core/pki/issued-by.js';
import { normalizeFingerprint, sha256Hex, x509 } from '../core/pki/x509.js';
import { enrollWithToken, renewCertificate } from '../core/registry/index.js';
import { acceptCsr } from './csr.js';
import type { ProvisioningDeps } from './deps.js';
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
 * CSR → policy → CA → registry, for a factory or device holding a one-time token. Checks that need no
 * database run first, so a bad CSR never holds a token lock.
 */
export async function enroll(deps: ProvisioningDeps, request: CsrSubmission & { token: string; deviceId?: string }): Promise<Issued> {
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
 * The certificate a client presented on this TLS connection, or a refusal saying what is wrong with
 * it. It must have been issued by one of our issuing CAs, checked here by its signature (OpenSSL's
 * verify result is not used: it reports one error, so an expired foreign certificate looked merely
 * expired). Expiry is the registry's to judge, with the renew-after-expiry grace.
 */
export function presentedCertificate(socket: TLSSocket, issuers: readonly IssuingCa[]): { fingerprint: string } {
  const peer = socket.getPeerCertificate?.();
  if (!peer || !peer.raw || !peer.fingerprint256) {
    throw new FleetError('client_certificate_required', 401, 'renewal needs the current device certificate presented as the TLS client certificate');
  }
  if (!issuingCaOf(issuers, peer.raw)) {
    throw new FleetError('client_certificate_invalid', 401, 'the client certificate was not issued by one of this CA\'s issuing CAs; present the device certificate this CA issued, or re-enroll');
  }
  return { fingerprint: normalizeFingerprint(peer.fingerprint256) };
}

/** Renewal over mTLS: the presented certificate proves the device, the CSR carries its new key. */
export async function renew(deps: ProvisioningDeps, socket: TLSSocket, request: CsrSubmission): Promise<Issued> {
  const { fingerprint } = presentedCertificate(socket, deps.ca.issuers);
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
