import { constants, randomBytes, X509Certificate } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import type { Logger } from '../core/log.js';
import type { CertificateAuthority, IssuingCa } from '../core/pki/authority.js';
import { issuingCaOf } from '../core/pki/issued-by.js';
import { secureContextOptions } from '../core/pki/tls.js';
import { normalizeFingerprint } from '../core/pki/x509.js';
import type { Refusal } from './admission.js';
import { connectionCap, connectionGate, openFileLimit, passGate } from './protection.js';
import { readPreface } from './proxy-protocol.js';

/*
 * The broker's front door: a trusted load balancer's PROXY header (proxy-protocol.ts), TCP admission
 * (rate and cap) by the device's address, the TLS handshake, the decision whether the client
 * certificate was issued by an issuing CA trusted now, and one deadline from the TCP accept to an
 * admitted CONNECT. Only a peer that passed all of it is handed to MQTT, together with the
 * fingerprint of the certificate that passed (verifiedPeer), which is what CONNECT looks up.
 */

/** The certificate a peer proved at its handshake; fixed for the connection's life. */
export interface VerifiedPeer {
  /** SHA-256 of the leaf, lower-case hex, as the registry stores it. */
  fingerprint: string;
}

const verifiedPeers = new WeakMap<object, VerifiedPeer>();

/**
 * The certificate that passed the front door's check for this connection, or undefined when none did
 * (the caller refuses). Read at CONNECT: renegotiation is refused, and this never changes anyway.
 */
export const verifiedPeer = (socket: object): VerifiedPeer | undefined => verifiedPeers.get(socket);

const peerAddresses = new WeakMap<object, string>();

/**
 * The device's address on this connection: what a trusted proxy's PROXY header names, else the TCP
 * peer's. Fixed before TLS starts, it is the one address the rate limit, refusals, presence and
 * device events all see.
 */
export const peerAddress = (socket: object): string | undefined => peerAddresses.get(socket);

export type PeerVerdict = { peer: VerifiedPeer } | { refusal: Refusal; details: Record<string, unknown> };

/** What a positive verdict remembers about a leaf; validity is compared with the clock each time. */
interface KnownLeaf {
  issuer: IssuingCa;
  /** The later of the leaf's and its issuing CA's notBefore, and the earlier of their notAfter. */
  notBefore: number;
  notAfter: number;
}

/**
 * Decides a client certificate by itself, not by OpenSSL's verdict: the leaf must be signed by one of
 * the issuing CAs the CA trusts now (issuingCaOf: its name, key identifier and signature checked
 * against that CA's certificate), so a retired issuing CA's devices are refused whatever chain they
 * send. Only a leaf of a trusted issuing CA can be `expired` or `not_yet_valid`; anything else is
 * `unknown_ca`. Positive verdicts are kept per fingerprint until the trusted issuers change (a
 * reconnect then costs no signature check); negative ones are not, so no peer can crowd good ones out.
 */
export function issuanceCheck(ca: CertificateAuthority, maxRemembered = 100_000): (leaf: X509Certificate, now: number) => PeerVerdict {
  let trustedFrom: readonly IssuingCa[] | undefined;
  const known = new Map<string, KnownLeaf>();

  const learn = (fingerprint: string, leaf: X509Certificate): KnownLeaf | undefined => {
    const issuer = issuingCaOf(ca.issuers, leaf);
    if (!issuer) return undefined;
    if (known.size >= maxRemembered) known.delete(known.keys().next().value!);
    const entry = {
      issuer,
      notBefore: Math.max(Date.parse(leaf.validFrom), issuer.certificate.notBefore.getTime()),
      notAfter: Math.min(Date.parse(leaf.validTo), issuer.certificate.notAfter.getTime()),
    };
    known.set(fingerprint, entry);
    return entry;
  };

  return (leaf, now) => {
    // ca.reload() replaces the array, so a rotation or retirement is seen on the next connection.
    if (ca.issuers !== trustedFrom) {
      trustedFrom = ca.issuers;
      known.clear();
    }
    const fingerprint = normalizeFingerprint(leaf.fingerprint256);
    const entry = known.get(fingerprint) ?? learn(fingerprint, leaf);
    if (!entry) return { refusal: 'unknown_ca', details: { fingerprint, subject: leaf.subject, issuer: leaf.issuer } };
    const { issuer } = entry;
    const details = { fingerprint, issuingCa: issuer.generation };
    if (now < entry.notBefore) return { refusal: 'not_yet_valid', details };
    if (now > entry.notAfter) return { refusal: 'expired', details };
    return { peer: { fingerprint } };
  };
}

/** Session tickets and IDs resume only on this broker's contexts. */
const SESSION_ID_CONTEXT = 'fleet-auth-broker';

/**
 * The broker's TLS context, built the same way at start and at every trust reload, so nothing it
 * refuses comes back with a new context. Renegotiation is refused by OpenSSL (a TLS 1.2 peer gets a
 * no_renegotiation alert): a renegotiated handshake could present another certificate than the one
 * checked. The ticket keys are kept across reloads, so devices still resume after a rotation; a
 * resumed session is checked again like any other.
 */
export function brokerSecureContext(ca: CertificateAuthority, ticketKeys: Buffer): tls.SecureContext {
  return tls.createSecureContext({
    ...secureContextOptions(ca),
    secureOptions: constants.SSL_OP_NO_RENEGOTIATION,
    sessionIdContext: SESSION_ID_CONTEXT,
    ticketKeys,
  });
}

/** Runs `fn` after `ms` unless cancelled; injectable so tests decide when time passes. */
export type Schedule = (ms: number, fn: () => void) => () => void;

const realSchedule: Schedule = (ms, fn) => {
  const timer = setTimeout(fn, ms);
  timer.unref();
  return () => clearTimeout(timer);
};

export interface FrontDoorDeps {
  ca: CertificateAuthority;
  clock: () => Date;
  log: Logger;
  /** Counts and logs a refused connection; the front door has already closed it or is about to. */
  refuse(reason: Refusal, peer: string | undefined, details?: Record<string, unknown>): void;
  /** A peer whose certificate passed: MQTT takes it from here. */
  onPeer(socket: tls.TLSSocket): void;
  /** Load balancers (FLEET_TRUSTED_PROXIES) whose connections start with a PROXY header naming the device; none when not given. */
  proxies?: { trusts(address: string | undefined): boolean };
}

export interface FrontDoorOptions {
  /** From the TCP accept to an admitted CONNECT; a connection that takes longer is closed. */
  connectTimeoutMs: number;
  connectRate: number;
  connectBurst: number;
  /** Asked for by configuration; lowered to what the open-file limit allows. */
  maxConnections?: number;
  /** The open-file limit; read from /proc/self/limits when not given. */
  openFiles?: number;
  /** Session-ticket keys (48 bytes), shared by broker workers so a session resumes on any of them; random when not given. */
  ticketKeys?: Buffer;
  schedule?: Schedule;
}

export interface FrontDoor {
  /** Listen on this one: it gates, then runs TLS itself. */
  server: net.Server;
  /** The connection cap in force. */
  maxConnections: number;
  /** The connection's CONNECT was admitted: its connect deadline no longer applies. */
  admitted(socket: object): void;
  /** Takes up the CA's current trust for new handshakes. */
  reloadTrust(): void;
  /** New session-ticket keys for new handshakes (a rotation); tickets under the old keys get a full handshake. */
  setTicketKeys(keys: Buffer): void;
  /** Closes every connection the front door accepted (at shutdown, after MQTT closed its sessions). */
  destroyAll(): void;
}

/**
 * Node's TLS server would destroy a peer without a certificate only after a completed TLS 1.3
 * handshake, or count it by OpenSSL's last error. The front door wraps each admitted TCP socket in a
 * TLSSocket itself instead, with `rejectUnauthorized` so OpenSSL ends a certificate-less handshake
 * with an alert (certificate_required in TLS 1.3, handshake_failure in 1.2); Node's verify callback
 * accepts every chain, so any other certificate reaches 'secure' and is decided by issuanceCheck.
 */
export function createFrontDoor(deps: FrontDoorDeps, options: FrontDoorOptions): FrontDoor {
  const { log } = deps;
  const schedule = options.schedule ?? realSchedule;
  const judge = issuanceCheck(deps.ca);
  let ticketKeys = options.ticketKeys ?? randomBytes(48);
  let context = brokerSecureContext(deps.ca, ticketKeys);
  const open = new Set<net.Socket>();
  const deadlines = new Map<object, () => void>();

  const cap = connectionCap(options.maxConnections, options.openFiles ?? openFileLimit());
  if (cap.lowered) {
    log.warn({ requested: options.maxConnections, ...cap }, 'FLEET_BROKER_MAX_CONNECTIONS is above what the open-file limit allows; lowered');
  }
  log.info({ maxConnections: cap.maxConnections, openFiles: cap.openFiles }, 'broker connection cap');

  const gate = connectionGate({
    perAddressPerSecond: options.connectRate,
    burst: options.connectBurst,
    maxConnections: cap.maxConnections,
    clock: () => deps.clock().getTime(),
  });
  const refuseAtGate = (decision: Refusal, address: string) => deps.refuse(decision, address);

  const accept = (raw: net.Socket) => {
    const from = raw.remoteAddress ?? '';
    const viaProxy = deps.proxies?.trusts(from) ?? false;
    // A device's own connection passes the gate on arrival, before it costs anything; a proxy's once
    // its header has named the device, so each device behind it has its own rate.
    if (!viaProxy && !passGate(gate, raw, from, refuseAtGate)) return;
    open.add(raw);
    let peer = from;
    let socket: tls.TLSSocket | undefined;
    let secure = false;
    let counted = false;
    let lastError: NodeJS.ErrnoException | undefined;
    const count = (reason: Refusal, details: Record<string, unknown>) => {
      if (counted) return;
      counted = true;
      deps.refuse(reason, peer, viaProxy ? { ...details, proxy: from } : details);
    };
    const waitingFor = () => (viaProxy && !socket ? 'PROXY header' : secure ? 'CONNECT' : 'TLS handshake');

    // One deadline from the TCP accept, the PROXY header included; keyed by the TLS socket once there is one.
    deadlines.set(
      raw,
      schedule(options.connectTimeoutMs, () => {
        deadlines.delete(socket ?? raw);
        count('connect_timeout', { waitingFor: waitingFor(), timeoutMs: options.connectTimeoutMs });
        socket?.destroy();
        raw.destroy();
      }),
    );
    raw.once('close', () => {
      deadlines.get(socket ?? raw)?.();
      deadlines.delete(socket ?? raw);
      open.delete(raw);
    });

    const handshake = () => {
      const tlsSocket = new tls.TLSSocket(raw, { isServer: true, secureContext: context, requestCert: true, rejectUnauthorized: true });
      socket = tlsSocket;
      peerAddresses.set(tlsSocket, peer);
      deadlines.set(tlsSocket, deadlines.get(raw)!);
      deadlines.delete(raw);
      // OpenSSL refuses a renegotiation (SSL_OP_NO_RENEGOTIATION) but still reports its start: Node then
      // raises ERR_TLS_RENEGOTIATION_DISABLED and the connection is closed, since no device renegotiates.
      tlsSocket.disableRenegotiation();
      open.add(tlsSocket);
      tlsSocket.on('error', (error: NodeJS.ErrnoException) => {
        lastError ??= error;
        if (error.code !== 'ERR_TLS_RENEGOTIATION_DISABLED') return;
        // aedes closes the socket on this error; before CONNACK that is a refusal like any other.
        if (deadlines.has(tlsSocket)) count('renegotiation_refused', {});
        else log.warn({ peer, fingerprint: verifiedPeer(tlsSocket)?.fingerprint }, 'renegotiation refused; session closed');
      });
      tlsSocket.once('close', () => {
        deadlines.get(tlsSocket)?.();
        deadlines.delete(tlsSocket);
        open.delete(tlsSocket);
        if (!secure) count(handshakeRefusal(lastError), { tlsError: lastError?.code ?? lastError?.message ?? 'closed during the handshake' });
      });
      tlsSocket.once('secure', () => {
        secure = true;
        const leaf = tlsSocket.getPeerX509Certificate();
        // Validity by the real clock, as TLS peers judge it; admission checks it again by the broker's clock.
        const verdict: PeerVerdict = leaf ? judge(leaf, Date.now()) : { refusal: 'no_certificate', details: {} };
        if ('refusal' in verdict) {
          count(verdict.refusal, verdict.details);
          tlsSocket.destroy();
          return;
        }
        verifiedPeers.set(tlsSocket, verdict.peer);
        releaseControl(tlsSocket);
        deps.onPeer(tlsSocket);
      });
    };

    // TLS starts on the first byte after the PROXY header (from a trusted proxy) or on the first byte.
    readPreface(raw, viaProxy, (preface) => {
      if (raw.destroyed && !('refusal' in preface)) return;
      if ('refusal' in preface) {
        if (preface.refusal !== 'closed') count(preface.refusal, { problem: preface.problem });
        else if (viaProxy) count('proxy_header_missing', { problem: preface.problem });
        else count('tls_handshake_failed', { tlsError: 'closed during the handshake' });
        raw.destroy();
        return;
      }
      if (preface.header?.source) peer = preface.header.source.address;
      if (viaProxy && !passGate(gate, raw, peer, refuseAtGate)) {
        counted = true;
        return;
      }
      handshake();
    });
  };

  const server = net.createServer(accept);

  return {
    server,
    maxConnections: cap.maxConnections,
    admitted(socket) {
      deadlines.get(socket)?.();
      deadlines.delete(socket);
    },
    reloadTrust() {
      context = brokerSecureContext(deps.ca, ticketKeys);
    },
    setTicketKeys(keys) {
      ticketKeys = keys;
      context = brokerSecureContext(deps.ca, ticketKeys);
    },
    destroyAll() {
      for (const socket of open) socket.destroy();
    },
  };
}

function handshakeRefusal(error: NodeJS.ErrnoException | undefined): Refusal {
  return error?.code === 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE' ? 'no_certificate' : 'tls_handshake_failed';
}

/**
 * Hands the socket's errors to whoever reads it next (aedes), as Node's own TLS server does once it
 * accepts a peer. Until then a TLSSocket routes TLS errors to an internal event only, so a refused
 * renegotiation or a forged record would neither surface nor close the connection.
 */
function releaseControl(socket: tls.TLSSocket): void {
  (socket as unknown as { _releaseControl(): boolean })._releaseControl();
}
