import type { CertificateIdentity } from '../core/registry/index.js';

/** Why a connection was refused: a stable label for logs and counters. */
export type Refusal =
  | 'no_certificate'
  | 'unknown_ca'
  | 'tls_handshake_failed'
  /** A TLS 1.2 renegotiation before CONNACK: refused, and the connection closed. */
  | 'renegotiation_refused'
  | 'unknown_certificate'
  | 'revoked'
  | 'suspended'
  | 'superseded'
  | 'device_inactive'
  | 'expired'
  | 'not_yet_valid'
  | 'client_id_mismatch'
  | 'registry_unavailable'
  /** A PROXY protocol header from an address that is not a trusted proxy (broker/proxy-protocol.ts). */
  | 'proxy_untrusted'
  /** A trusted proxy's connection that does not start with a PROXY header. */
  | 'proxy_header_missing'
  /** A PROXY header that is malformed, too long, or names no usable TCP source. */
  | 'proxy_header_invalid'
  | 'rate_limited'
  | 'too_many_connections'
  | 'packet_too_large'
  | 'malformed_packet'
  | 'keepalive_too_long'
  /** Bytes that are not MQTT, or packets out of order: before CONNECT, a second CONNECT, a bad CONNECT. */
  | 'protocol_error'
  /** A CONNECT of a protocol level the broker does not speak (MQTT 5 included): answered CONNACK 0x01. */
  | 'unsupported_protocol_version'
  /** TLS and an admitted CONNECT not done within the connect timeout from the TCP accept. */
  | 'connect_timeout'
  /** Something failed inside the broker while deciding; logged, and the device is told to retry. */
  | 'internal_error';

export type Admission = { admitted: true } | { admitted: false; reason: Refusal };

/**
 * Decides whether a TLS peer, already chained to our CA, may open an MQTT session as `clientId`.
 * Unknown identities are refused: the registry, not the CA signature, is the source of truth.
 */
export function decideAdmission(identity: CertificateIdentity | undefined, clientId: string, now: Date): Admission {
  if (!identity) return { admitted: false, reason: 'unknown_certificate' };
  if (identity.certificateStatus === 'revoked' || identity.deviceStatus === 'revoked') return { admitted: false, reason: 'revoked' };
  if (identity.deviceStatus === 'suspended' || identity.certificateStatus === 'suspended') return { admitted: false, reason: 'suspended' };
  // A renewed certificate stays usable through the overlap, so a device can reconnect with the new one.
  if (identity.certificateStatus === 'superseded' && !(identity.acceptUntil && now.getTime() < identity.acceptUntil.getTime())) {
    return { admitted: false, reason: 'superseded' };
  }
  if (identity.deviceStatus !== 'active') return { admitted: false, reason: 'device_inactive' };
  if (now.getTime() >= identity.notAfter.getTime()) return { admitted: false, reason: 'expired' };
  if (now.getTime() < identity.notBefore.getTime()) return { admitted: false, reason: 'not_yet_valid' };
  if (clientId !== identity.deviceId) return { admitted: false, reason: 'client_id_mismatch' };
  return { admitted: true };
}
