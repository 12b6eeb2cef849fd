import { BlockList, isIP } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { HttpBindings } from '@hono/node-server';
import type { Context } from 'hono';
import type { TrustedProxyConfig } from '../core/config.js';
import { FleetError } from '../core/errors.js';
import type { CertificateAuthority } from '../core/pki/authority.js';
import { fingerprintOf, x509 } from '../core/pki/x509.js';
import type { ProvisioningDeps } from './deps.js';
import { presentedCertificate } from './enrollment.js';

/** Envoy's header; any other configured name carries nginx's $ssl_client_escaped_cert. */
export const XFCC_HEADER = 'x-forwarded-client-cert';
/** What nginx's $ssl_client_verify says for a certificate that verified. */
const VERIFIED = 'SUCCESS';

export interface TrustedProxies {
  config: TrustedProxyConfig;
  /** Whether a connection from this address is one of the configured proxies. */
  trusts(address: string | undefined): boolean;
}

/** An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d. */
const plainAddress = (address: string): string => (address.startsWith('::ffff:') && isIP(address.slice(7)) === 4 ? address.slice(7) : address);

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
      const plain = plainAddress(address);
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

/** The proxy verified the certificate against its own trust store; ours is checked here as well. */
async function issuedByUs(ca: CertificateAuthority, certificate: x509.X509Certificate): Promise<boolean> {
  for (const { certificate: issuer } of ca.issuers) {
    if (issuer.subject !== certificate.issuer) continue;
    if (await certificate.verify({ publicKey: issuer.publicKey, signatureOnly: true })) return true;
  }
  return false;
}

/**
 * The certificate this request's client presented: the TLS client certificate, or, from a trusted
 * proxy that terminated TLS and reports it verified one, the certificate it forwards. A forwarded
 * header from anyone else, or one the proxy did not verify, is ignored and logged: the connection's
 * own certificate (usually none) decides.
 */
export async function clientCertificateOf(deps: ProvisioningDeps, c: Context): Promise<{ fingerprint: string }> {
  const socket = (c.env as HttpBindings).incoming.socket as TLSSocket;
  const proxies = deps.trustedProxies ?? NO_PROXY;
  const { certHeader, verifyHeader } = proxies.config;
  const forwarded = c.req.header(certHeader);
  if (!forwarded) return presentedCertificate(socket);
  const peer = socket.remoteAddress;
  if (!proxies.trusts(peer)) {
    deps.log.warn({ peer, header: certHeader, path: c.req.path }, 'ignored a forwarded client certificate from an address that is not a trusted proxy (FLEET_TRUSTED_PROXIES)');
    return presentedCertificate(socket);
  }
  const xfcc = certHeader.toLowerCase() === XFCC_HEADER;
  const verify = c.req.header(verifyHeader);
  if (!xfcc && verify !== VERIFIED) {
    deps.log.warn({ peer, header: verifyHeader, verify: verify ?? null, path: c.req.path }, 'ignored a forwarded client certificate the proxy did not report as verified');
    return presentedCertificate(socket);
  }
  const encoded = xfcc ? certFromXfcc(forwarded) : forwarded;
  if (!encoded) {
    deps.log.warn({ peer, header: certHeader, path: c.req.path }, 'ignored an x-forwarded-client-cert element without a Cert field');
    return presentedCertificate(socket);
  }
  const certificate = parseForwarded(encoded);
  if (!(await issuedByUs(deps.ca, certificate))) {
    throw new FleetError('client_certificate_invalid', 401, 'the forwarded client certificate was not issued by this CA');
  }
  return { fingerprint: fingerprintOf(certificate) };
}
