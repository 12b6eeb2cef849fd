import { readFileSync } from 'node:fs';
import net from 'node:net';
import type { Readable } from 'node:stream';
import { rateKeyOf } from '../core/net-address.js';
import { DEFAULT_MAX_KEYS, tokenBuckets } from '../core/rate-limit.js';

export { rateKeyOf };

/*
 * Protection for the broker's front door, applied before any registry lookup: a connection gate
 * (per-address rate and a global cap, checked when the TCP connection arrives, before the TLS
 * handshake costs a signature), a cap on MQTT packet size, and a bound on keepalive.
 */

export type GateDecision = 'ok' | 'rate_limited' | 'too_many_connections';

export interface ConnectionGateOptions {
  /** New connections an address may open per second, sustained. */
  perAddressPerSecond: number;
  /** New connections an address may open at once after it has been quiet. */
  burst: number;
  /** Connections open at once, from everyone. */
  maxConnections: number;
  /** Milliseconds; passed in so tests decide what time it is. */
  clock: () => number;
  /** Addresses whose rate is remembered at most; past that the least recently seen are forgotten. */
  maxAddresses?: number;
}

export interface ConnectionGate {
  /** Call when a TCP connection arrives; on 'ok' the connection counts as open until `release`. */
  admit(address: string): GateDecision;
  /** Call when an admitted connection closes. Extra calls for an address with nothing open are ignored. */
  release(address: string): void;
  /** Connections admitted and not yet released. */
  readonly open: number;
  /** Addresses whose rate is remembered now (bounded by `maxAddresses`). */
  readonly trackedAddresses: number;
}

export const DEFAULT_MAX_TRACKED_ADDRESSES = DEFAULT_MAX_KEYS;

export function connectionGate(options: ConnectionGateOptions): ConnectionGate {
  const { maxConnections } = options;
  if (!(maxConnections >= 1)) throw new RangeError('connectionGate needs maxConnections >= 1');
  const rates = tokenBuckets({
    perSecond: options.perAddressPerSecond,
    burst: options.burst,
    clock: options.clock,
    maxKeys: options.maxAddresses ?? DEFAULT_MAX_TRACKED_ADDRESSES,
  });
  const openByAddress = new Map<string, number>();
  let open = 0;

  return {
    admit(address) {
      const key = rateKeyOf(address);
      // Every attempt costs a token, refused or not: a flood is a flood whether or not we are full.
      if (rates.take(key)) return 'rate_limited';
      if (open >= maxConnections) return 'too_many_connections';
      open++;
      openByAddress.set(key, (openByAddress.get(key) ?? 0) + 1);
      return 'ok';
    },
    release(address) {
      const key = rateKeyOf(address);
      const count = openByAddress.get(key);
      if (!count) return;
      if (count === 1) openByAddress.delete(key);
      else openByAddress.set(key, count - 1);
      open--;
    },
    get open() {
      return open;
    },
    get trackedAddresses() {
      return rates.trackedKeys;
    },
  };
}

/** The cap where the open-file limit cannot be read (no /proc) or is unlimited. */
export const FALLBACK_MAX_CONNECTIONS = 16_000;

/**
 * File descriptors left for everything beside broker connections: the API's clients, the database
 * pools and change feed, logs and the CA's files.
 */
export const reservedFiles = (openFiles: number): number => Math.max(512, Math.ceil(openFiles / 10));

/**
 * The process's soft limit on open files, from Linux's /proc/self/limits (Node raises it to the hard
 * limit at start). Undefined where there is no such file or the limit is unlimited.
 */
export function openFileLimit(readLimits: () => string = () => readFileSync('/proc/self/limits', 'utf8')): number | undefined {
  let text: string;
  try {
    text = readLimits();
  } catch {
    return undefined;
  }
  const soft = /^Max open files\s+(\d+)\s/m.exec(text)?.[1];
  return soft === undefined ? undefined : Number(soft);
}

export interface ConnectionCap {
  maxConnections: number;
  /** The open-file limit it was derived from, when known. */
  openFiles: number | undefined;
  /** Whether a configured cap was lowered to fit the open-file limit. */
  lowered: boolean;
}

/**
 * Broker connections open at once: what was asked for (FLEET_BROKER_MAX_CONNECTIONS), or all the
 * open-file limit allows, but never more than that limit minus the reserve, so accepting a
 * connection never fails with EMFILE.
 */
export function connectionCap(requested: number | undefined, openFiles: number | undefined): ConnectionCap {
  if (openFiles === undefined) return { maxConnections: requested ?? FALLBACK_MAX_CONNECTIONS, openFiles, lowered: false };
  const room = Math.max(1, openFiles - reservedFiles(openFiles));
  const lowered = requested !== undefined && requested > room;
  return { maxConnections: requested === undefined || lowered ? room : requested, openFiles, lowered };
}

/**
 * A plain TCP server whose connections pass the gate first: only admitted ones are handed to
 * `onAdmitted` (the TLS layer), so a refused one costs no TLS state and no handshake. An admitted
 * connection holds its slot until its socket closes.
 */
export function gatedServer(
  onAdmitted: (socket: net.Socket) => void,
  gate: ConnectionGate,
  onRefuse: (decision: Exclude<GateDecision, 'ok'>, address: string) => void,
): net.Server {
  return net.createServer((socket) => {
    if (passGate(gate, socket, socket.remoteAddress ?? '', onRefuse)) onAdmitted(socket);
  });
}

/**
 * Puts one connection, as coming from `address`, through the gate: a refused one is closed and
 * reported, an admitted one holds its slot until its socket closes. The address is the TCP peer's,
 * or the device's as a trusted proxy's PROXY header names it.
 */
export function passGate(
  gate: ConnectionGate,
  socket: net.Socket,
  address: string,
  onRefuse: (decision: Exclude<GateDecision, 'ok'>, address: string) => void,
): boolean {
  const decision = gate.admit(address);
  if (decision !== 'ok') {
    socket.destroy();
    onRefuse(decision, address);
    return false;
  }
  socket.once('close', () => gate.release(address));
  return true;
}

export type PacketRefusal =
  | { reason: 'packet_too_large'; declaredBytes: number; maxBytes: number }
  /** A remaining length longer than the four bytes MQTT allows. */
  | { reason: 'malformed_packet' };

/** The largest packet MQTT can express: a 268,435,455-byte remaining length behind a 5-byte fixed header. */
export const MQTT_MAX_PACKET_BYTES = 268_435_460;

/**
 * Follows an MQTT byte stream packet by packet, reading only each fixed header (type byte and
 * remaining length) and skipping the bodies, so it costs a few operations per packet whatever the
 * packet holds. Returns a refusal as soon as a header declares a packet larger than `maxBytes`
 * (fixed header included, as MQTT 5's Maximum Packet Size counts it), before its body arrives.
 */
export function packetSizeMeter(maxBytes: number): (chunk: Uint8Array) => PacketRefusal | undefined {
  let phase: 'type' | 'length' | 'body' = 'type';
  let remaining = 0;
  let lengthBytes = 0;
  let refusal: PacketRefusal | undefined;

  const readLength = (byte: number): PacketRefusal | undefined => {
    remaining += (byte & 0x7f) * 128 ** lengthBytes++;
    if (byte & 0x80) return lengthBytes === 4 ? { reason: 'malformed_packet' } : undefined;
    const declaredBytes = 1 + lengthBytes + remaining;
    if (declaredBytes > maxBytes) return { reason: 'packet_too_large', declaredBytes, maxBytes };
    phase = remaining === 0 ? 'type' : 'body';
    return undefined;
  };

  return (chunk) => {
    let at = 0;
    while (!refusal && at < chunk.length) {
      if (phase === 'body') {
        const skipped = Math.min(remaining, chunk.length - at);
        at += skipped;
        remaining -= skipped;
        if (remaining === 0) phase = 'type';
      } else if (phase === 'type') {
        at++;
        phase = 'length';
        remaining = 0;
        lengthBytes = 0;
      } else {
        refusal = readLength(chunk[at++]!);
      }
    }
    return refusal;
  };
}

/**
 * Closes a connection whose next MQTT packet declares more than `maxBytes`. aedes 1.x has no such
 * limit (it builds mqtt-packet's parser without options, and the parser has none), and the parser
 * buffers a whole packet before handing it on, so a client could make us hold up to 256 MB per
 * connection. Apply to each socket before `aedes.handle(socket)`.
 *
 * The guard wraps the socket's own `read()`: aedes consumes in paused mode (`conn.read()` on
 * 'readable'), so every chunk passes the meter before the parser sees it, and the chunk carrying an
 * oversized header is withheld; a 'data' listener would only see a chunk as aedes already holds it.
 * The socket object stays the same, so `client.conn` is still the TLSSocket with its certificate.
 */
export function guardPacketSize(socket: Readable, maxBytes: number, onRefuse: (refusal: PacketRefusal) => void): void {
  const meter = packetSizeMeter(maxBytes);
  const read = socket.read;
  let refused = false;
  socket.read = function guardedRead(this: Readable, size?: number) {
    const chunk: unknown = read.call(this, size);
    if (refused || !(chunk instanceof Uint8Array)) return refused ? null : chunk;
    const refusal = meter(chunk);
    if (!refusal) return chunk;
    refused = true;
    socket.destroy();
    onRefuse(refusal);
    return null;
  };
}

export type KeepaliveDecision = 'ok' | 'keepalive_too_long';

/**
 * Whether a CONNECT's keepalive (seconds) is within the broker's bound. Zero means "never check",
 * which lets a dead device's half-open connection hold a slot forever, so it is refused too. A
 * `maxSeconds` of 0 turns the bound off.
 */
export function checkKeepalive(keepaliveSeconds: number, maxSeconds: number): KeepaliveDecision {
  if (maxSeconds === 0) return 'ok';
  return keepaliveSeconds > 0 && keepaliveSeconds <= maxSeconds ? 'ok' : 'keepalive_too_long';
}
