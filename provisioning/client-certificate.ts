import { X509Certificate } from 'node:crypto';
import { BlockList, isIP } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { HttpBindings } from '@hono/node-server';
import type { Context } from 'hono';
import type { TrustedProxyConfig } from '../core/config.js';
import { FleetError } from '../core/errors.js';
import type { IssuingCa } from '../core/pki/authority.js';
import { issuingCaOf } from '../core/pki/issued-by.js';
import { normalizeFingerprint, x509 } from '../core/pki/x509.js';
import { unmapIPv4 } from '../core/net-address.js';
import type { ProvisioningDeps } from './deps.js';

/** Envoy's header; any other configured name carries nginx's $ssl_client_escaped_cert. */
export const XFCC_HEADER = 'x-forwarded-client-cert';
/** What nginx's $ssl_client_verify says for a certificate that verified. */
const VERIFIED = 'SUCCESS';

export interface TrustedProxies {
  config: TrustedProxyConfig;
  /** Whether a connection from this address is one of the configured proxies. */
  trusts(address: string | undefined): boolean;
}


export function trustedProxies(config: TrustedProxyConfig): TrustedProxies {
  const list = new BlockList();
  for (const entry of config.trustedProxies) {
    const [address, bits] = entry.split('/') as [string, string | undefined];
    const type = isIP(address) === 6 ? 'ipv6' : 'ipv4';
    if (bits === undefined) list.addAddress(address, type);
    else list.addSubnet(address, Number(bits), type);
  }
  return {
    config,
    trusts(address) {
      if (!address || config.trustedProxies.length === 0) return false;
      const plain = unmapIPv4(address);
      return list.check(plain, isIP(plain) === 6 ? 'ipv6' : 'ipv4');
    },
  };
}

/** No proxy configured: forwarded certificate headers are looked for only to log them. */
const NO_PROXY = trustedProxies({ trustedProxies: [], certHeader: 'X-SSL-Client-Cert', verifyHeader: 'X-SSL-Client-Verify' });

/** Splits at `separator` outside double quotes. */
function splitOutsideQuotes(text: string, separator: string): string[] {
  const parts: string[] = [];
  let current = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (ch === '\\' && quoted && i + 1 < text.length) current += ch + text[++i];
    else if (ch === '"') (quoted = !quoted), (current += ch);
    else if (ch === separator && !quoted) parts.push(current), (current = '');
    else current += ch;
  }
  parts.push(current);
  return parts;
}

/**
 * The URL-encoded PEM in Envoy's XFCC header: the Cert field of the last element, which is the one
 * the nearest proxy (the trusted one) wrote; earlier elements came from further away.
 */
function certFromXfcc(header: string): string | undefined {
  const element = splitOutsideQuotes(header, ',').at(-1) ?? '';
  for (const pair of splitOutsideQuotes(element, ';')) {
    const eq = pair.indexOf('=');
    if (eq < 0 || pair.slice(0, eq).trim().toLowerCase() !== 'cert') continue;
    return pair.slice(eq + 1).trim().replace(/^"(.*)"$/s, '$1');
  }
  return undefined;
}

function parseForwarded(encoded: string): x509.X509Certificate {
  try {
    return new x509.X509Certificate(decodeURIComponent(encoded));
  } catch {
    throw new FleetError('client_certificate_invalid', 401, 'the proxy forwarded a client certificate that is not a URL-encoded PEM certificate');
  }
}

/**
 * The one chain check, whichever way the certificate came (on this TLS connection, or forwarded by a
 * trusted proxy, which verified it against its own trust store): it must have been issued by one of
 * our issuing CAs, checked by its signature. OpenSSL's verify result is not used: it reports one
 * error, so an expired foreign certificate looked merely expired. Expiry is the registry's to judge,
 * with the renew-after-expiry grace (FLEET_RENEW_AFTER_EXPIRY).
 */
function issuedByUs(issuers: readonly IssuingCa[], certificate: X509Certificate, which: string): { fingerprint: string } {
  if (!issuingCaOf(issuers, certificate)) {
    throw new FleetError('client_certificate_invalid', 401, `${which} was not issued by one of this CA's issuing CAs; present the device certificate this CA issued, or re-enroll`);
  }
  return { fingerprint: normalizeFingerprint(certificate.fingerprint256) };
}

/** The certificate a client presented on this TLS connection, or a refusal saying what is wrong with it. */
function presentedCertificate(socket: TLSSocket, issuers: readonly IssuingCa[]): { fingerprint: string } {
  // As TLS parsed it: parsing the DER again would cost more than the signature check.
  const peer = socket.getPeerX509Certificate?.();
  if (!peer) {
    throw new FleetError('client_certificate_required', 401, 'renewal needs the current device certificate presented as the TLS client certificate');
  }
  return issuedByUs(issuers, peer, 'the client certificate');
}

/**
 * The certificate this request's client presented: the TLS client certificate, or, from a trusted
 * proxy that terminated TLS and reports it verified one, the certificate it forwards. A forwarded
 * header from anyone else, or one the proxy did not verify, is ignored and logged: the connection's
 * own certificate (usually none) decides.
 */
export function clientCertificateOf(deps: ProvisioningDeps, c: Context): { fingerprint: string } {
  const socket = (c.env as HttpBindings).incoming.socket as TLSSocket;
  const issuers = deps.ca.issuers;
  const proxies = deps.trustedProxies ?? NO_PROXY;
  const { certHeader, verifyHeader } = proxies.config;
  const forwarded = c.req.header(certHeader);
  if (!forwarded) return presentedCertificate(socket, issuers);
  const peer = socket.remoteAddress;
  if (!proxies.trusts(peer)) {
    deps.log.warn({ peer, header: certHeader, path: c.req.path }, 'ignored a forwarded client certificate from an address that is not a trusted proxy (FLEET_TRUSTED_PROXIES)');
    return presentedCertificate(socket, issuers);
  }
  const xfcc = certHeader.toLowerCase() === XFCC_HEADER;
  const verify = c.req.header(verifyHeader);
  if (!xfcc && verify !== VERIFIED) {
    deps.log.warn({ peer, header: verifyHeader, verify: verify ?? null, path: c.req.path }, 'ignored a forwarded client certificate the proxy did not report as verified');
    return presentedCertificate(socket, issuers);
  }
  const encoded = xfcc ? certFromXfcc(forwarded) : forwarded;
  if (!encoded) {
    deps.log.warn({ peer, header: certHeader, path: c.req.path }, 'ignored an x-forwarded-client-cert element without a Cert field');
    return presentedCertificate(socket, issuers);
  }
  return issuedByUs(issuers, new X509Certificate(new Uint8Array(parseForwarded(encoded).rawData)), 'the forwarded client certificate');
}
