import net, { isIP } from 'node:net';
import { AddressFamilyType, Command, IPv4ProxyAddress, IPv6ProxyAddress, TransportProtocol, V1ProxyProtocol, V2ProxyProtocol } from 'proxy-protocol-js';
import { unmapIPv4 } from '../core/net-address.js';
import type { Refusal } from './admission.js';

/*
 * The PROXY protocol (HAProxy's; v1 text, v2 binary) at the broker's front door. A TCP load balancer
 * that terminates nothing puts one header before the device's bytes, naming the device's address; the
 * broker reads it before TLS starts and believes it only from FLEET_TRUSTED_PROXIES. proxy-protocol-js
 * parses a header once its bytes are framed here: it neither bounds its input nor checks addresses,
 * so framing, length caps and address checks are this file's, and anything off is refused.
 */

export type ProxyRefusal = Extract<Refusal, 'proxy_untrusted' | 'proxy_header_missing' | 'proxy_header_invalid'>;

/** What a trusted proxy's header says about the connection. */
export interface ProxyHeader {
  version: 1 | 2;
  /** The device's address and port; undefined for LOCAL (v2) and UNKNOWN (v1): the proxy's own connection, a health check. */
  source?: { address: string; port: number };
}

/** The spec's longest v1 line, CRLF included. */
export const V1_MAX_BYTES = 107;
/** A v2 header's 16 fixed bytes and its address block (36 for IPv6) with room for TLVs balancers add (AWS, Azure); more is refused. */
export const V2_MAX_BYTES = 16 + 496;

const V1_SIGNATURE = Buffer.from('PROXY ');
/** The v2 signature: \r\n\r\n\0\r\nQUIT\n. */
const V2_SIGNATURE = Buffer.from('\r\n\r\n\0\r\nQUIT\n', 'latin1');

/** Whether `bytes` is, or begins, a PROXY signature (v1 or v2): compares only what has arrived. */
export function startsLikeProxyHeader(bytes: Buffer): boolean {
  const matches = (signature: Buffer) => bytes.subarray(0, signature.length).equals(signature.subarray(0, Math.min(bytes.length, signature.length)));
  return bytes.length > 0 && (matches(V1_SIGNATURE) || matches(V2_SIGNATURE));
}

export type HeaderParse =
  | { done: false }
  | { done: true; header: ProxyHeader; length: number }
  | { done: true; refusal: ProxyRefusal; problem: string };

const invalid = (problem: string): HeaderParse => ({ done: true, refusal: 'proxy_header_invalid', problem });

/**
 * Reads a PROXY header at the start of `bytes` (everything received so far): not done while it may
 * still be completing, else the header and its length in bytes, or why it is refused.
 */
export function parseProxyHeader(bytes: Buffer): HeaderParse {
  if (!startsLikeProxyHeader(bytes)) return { done: true, refusal: 'proxy_header_missing', problem: 'the connection does not start with a PROXY header' };
  return bytes[0] === V1_SIGNATURE[0] ? parseV1(bytes) : parseV2(bytes);
}

function parseV1(bytes: Buffer): HeaderParse {
  const end = bytes.subarray(0, V1_MAX_BYTES).indexOf('\r\n');
  if (end < 0) return bytes.length >= V1_MAX_BYTES ? invalid(`a v1 header longer than ${V1_MAX_BYTES} bytes`) : { done: false };
  const length = end + 2;
  const line = bytes.toString('latin1', 0, length);
  // UNKNOWN: the proxy could not tell (or it is its own connection); the spec says use the real address.
  if (/^PROXY UNKNOWN[ \r]/.test(line)) return { done: true, header: { version: 1 }, length };
  let parsed: V1ProxyProtocol;
  try {
    parsed = V1ProxyProtocol.parse(line);
  } catch {
    return invalid('a v1 header that does not parse');
  }
  const family = parsed.inetProtocol === 'TCP4' ? 4 : parsed.inetProtocol === 'TCP6' ? 6 : undefined;
  const { ipAddress, port } = parsed.source;
  if (family === undefined || isIP(ipAddress) !== family || isIP(parsed.destination.ipAddress) !== family) return invalid('a v1 header with addresses not of its family');
  if (!validPort(port) || !validPort(parsed.destination.port)) return invalid('a v1 header with a port out of range');
  return { done: true, header: { version: 1, source: { address: canonical(ipAddress, family), port } }, length };
}

function parseV2(bytes: Buffer): HeaderParse {
  if (bytes.length < 16) return { done: false };
  const length = 16 + bytes.readUInt16BE(14);
  if (length > V2_MAX_BYTES) return invalid(`a v2 header of ${length} bytes, above ${V2_MAX_BYTES}`);
  if (bytes.length < length) return { done: false };
  let parsed: V2ProxyProtocol;
  try {
    // Exactly the header: the parser would take any bytes after it (the TLS handshake) as TLVs.
    parsed = V2ProxyProtocol.parse(bytes.subarray(0, length));
  } catch {
    return invalid('a v2 header that does not parse');
  }
  // LOCAL: the proxy's own connection (a health check); its address block, if any, means nothing.
  if (parsed.command === Command.LOCAL) return { done: true, header: { version: 2 }, length };
  if (parsed.transportProtocol !== TransportProtocol.STREAM) return invalid('a v2 header for a transport other than TCP');
  const address = parsed.proxyAddress;
  if (parsed.addressFamilyType === AddressFamilyType.INET && address instanceof IPv4ProxyAddress) {
    return { done: true, header: { version: 2, source: { address: address.sourceAddress.address.join('.'), port: address.sourcePort } }, length };
  }
  if (parsed.addressFamilyType === AddressFamilyType.INET6 && address instanceof IPv6ProxyAddress) {
    return { done: true, header: { version: 2, source: { address: ipv6Text(address.sourceAddress.address), port: address.sourcePort } }, length };
  }
  return invalid('a v2 header whose source is not an IPv4 or IPv6 address');
}

const validPort = (port: number) => Number.isInteger(port) && port >= 0 && port <= 65535;

/**
 * An address as the rest of the broker writes it: IPv6 in its short lower-case form (2001:db8::1),
 * and an IPv4-mapped one (a dual-stack balancer's IPv4 client) as its IPv4 address, so a device has
 * one rate bucket and one recorded address however the balancer wrote it.
 */
const canonical = (address: string, family: 4 | 6): string =>
  family === 4 ? address : unmapIPv4(new net.SocketAddress({ address, family: 'ipv6' }).address);

/** Sixteen bytes as an IPv6 address, canonical. */
const ipv6Text = (bytes: readonly number[]): string =>
  canonical(Array.from({ length: 8 }, (_, i) => ((bytes[2 * i]! << 8) | bytes[2 * i + 1]!).toString(16)).join(':'), 6);

/** What the first bytes of a connection said; `header` only from a trusted proxy. */
export type Preface =
  | { header?: ProxyHeader }
  | { refusal: ProxyRefusal | 'closed'; problem: string };

/**
 * Reads what a connection sends before TLS, then hands it on with every byte after the header put
 * back (`unshift`), so TLS starts on the device's first byte. From a trusted proxy that is its PROXY
 * header, which is required; from anyone else, only the first chunk is looked at, and a PROXY header
 * there is refused. Only the bytes received so far are held, at most a header's cap.
 */
export function readPreface(socket: net.Socket, fromTrustedProxy: boolean, done: (preface: Preface) => void): void {
  let received: Buffer = Buffer.alloc(0);
  let finished = false;
  const finish = (preface: Preface, rest?: Buffer) => {
    if (finished) return;
    finished = true;
    socket.off('data', onData);
    socket.off('end', onClosed);
    socket.off('close', onClosed);
    socket.off('error', onClosed);
    socket.pause();
    if (rest && rest.length > 0) socket.unshift(rest);
    done(preface);
  };
  // A reset before TLS is a close like any other; nothing else listens for the socket's errors yet.
  const onClosed = () => finish({ refusal: 'closed', problem: 'the connection closed before TLS started' });
  const onData = (chunk: Buffer) => {
    received = received.length === 0 ? chunk : Buffer.concat([received, chunk]);
    if (!fromTrustedProxy) {
      if (startsLikeProxyHeader(received)) return finish({ refusal: 'proxy_untrusted', problem: 'a PROXY header from an address not in FLEET_TRUSTED_PROXIES' });
      return finish({}, received);
    }
    const parse = parseProxyHeader(received);
    if (!parse.done) return;
    if ('refusal' in parse) return finish({ refusal: parse.refusal, problem: parse.problem });
    finish({ header: parse.header }, received.subarray(parse.length));
  };
  socket.on('data', onData);
  socket.once('end', onClosed);
  socket.once('close', onClosed);
  socket.once('error', onClosed);
}
