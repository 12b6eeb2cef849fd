import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';

export interface DeviceTls {
  ca: string;
  cert?: string;
  key?: string;
  /** A TLS session from an earlier connection, to resume it. */
  session?: Buffer;
}

export interface Connection {
  client: MqttClient;
  /** 'connected' once CONNACK accepted the session; 'refused' if the connection ended before that. */
  outcome: 'connected' | 'refused';
  /**
   * The CONNACK return code the broker answered with (0 accepted, 2 identifier rejected, 3 server
   * unavailable, 5 not authorized...), or undefined when the connection closed without any CONNACK.
   */
  connack: number | undefined;
  /** Whether TLS resumed the session given in `tls.session`. */
  resumed: boolean;
  /** TLS session tickets the server sent on this connection, to resume with later. */
  tickets: Buffer[];
  error?: Error;
}

/** Connects one real MQTT.js client over mutual TLS, without reconnecting, and reports what happened. */
export function connectDevice(port: number, clientId: string, tls: DeviceTls, options: IClientOptions = {}): Promise<Connection> {
  const client = mqtt.connect({
    protocol: 'mqtts',
    host: 'localhost',
    port,
    clientId,
    ca: tls.ca,
    cert: tls.cert,
    key: tls.key,
    // MQTT.js hands unknown options to tls.connect; its types just do not list this one.
    ...({ session: tls.session } as object),
    reconnectPeriod: 0,
    connectTimeout: 5000,
    protocolVersion: 4,
    ...options,
  });
  return new Promise((resolve) => {
    let lastError: Error | undefined;
    let connack: number | undefined;
    let resumed = false;
    const tickets: Buffer[] = [];
    const socket = client.stream as unknown as TLSSocket;
    socket.on('session', (ticket: Buffer) => tickets.push(ticket));
    socket.once('secureConnect', () => (resumed = socket.isSessionReused()));
    client.on('packetreceive', (packet) => {
      if (packet.cmd === 'connack') connack ??= packet.returnCode ?? packet.reasonCode;
    });
    client.on('error', (error) => (lastError = error));
    client.once('connect', () => resolve({ client, outcome: 'connected', connack, resumed, tickets }));
    client.once('close', () => resolve({ client, outcome: 'refused', connack, resumed, tickets, error: lastError }));
  });
}

/** Resolves with the first message on a topic matching `prefix`, or undefined after `ms`. */
export function nextMessage(client: MqttClient, prefix: string, ms: number): Promise<{ topic: string; payload: string } | undefined> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      client.off('message', onMessage);
      resolve(undefined);
    }, ms);
    const onMessage = (topic: string, payload: Buffer) => {
      if (!topic.startsWith(prefix)) return;
      clearTimeout(timer);
      client.off('message', onMessage);
      resolve({ topic, payload: payload.toString() });
    };
    client.on('message', onMessage);
  });
}

export const closed = (client: MqttClient): Promise<void> =>
  new Promise((resolve) => (client.disconnected || !client.connected ? resolve() : client.once('close', () => resolve())));

/*
 * MQTT 3.1.1 written byte by byte, for what no well-behaved client library will send: other protocol
 * levels, malformed and out-of-order packets, topics that are not valid UTF-8.
 */
const text = (value: string | Buffer) => {
  const bytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
  const length = Buffer.alloc(2);
  length.writeUInt16BE(bytes.length);
  return Buffer.concat([length, bytes]);
};

/** A packet: its type-and-flags byte, the remaining length as MQTT encodes it, then the body. */
export function mqttPacket(first: number, body: Buffer): Buffer {
  const length: number[] = [];
  let remaining = body.length;
  do {
    let byte = remaining % 128;
    remaining = Math.floor(remaining / 128);
    if (remaining > 0) byte |= 0x80;
    length.push(byte);
  } while (remaining > 0);
  return Buffer.concat([Buffer.from([first, ...length]), body]);
}

export function connectPacket(o: { clientId: string; level?: number; keepalive?: number; will?: { topic: string | Buffer; payload: string; retain?: boolean } }): Buffer {
  const flags = 0x02 | (o.will ? 0x04 | 0x08 | (o.will.retain ? 0x20 : 0) : 0); // clean session; Will at QoS 1
  const header = Buffer.concat([text('MQTT'), Buffer.from([o.level ?? 4, flags, 0, o.keepalive ?? 60])]);
  // MQTT 5 puts a properties length (here: none) after the keepalive.
  const properties = o.level === 5 ? Buffer.from([0]) : Buffer.alloc(0);
  const will = o.will ? [...(o.level === 5 ? [Buffer.from([0])] : []), text(o.will.topic), text(o.will.payload)] : [];
  return mqttPacket(0x10, Buffer.concat([header, properties, text(o.clientId), ...will]));
}

export const publishPacket = (topic: string | Buffer, payload: string) => mqttPacket(0x30, Buffer.concat([text(topic), Buffer.from(payload)]));

export const PINGREQ = Buffer.from([0xc0, 0x00]);

export const subscribePacket = (messageId: number, filter: string | Buffer) =>
  mqttPacket(0x82, Buffer.concat([Buffer.from([messageId >> 8, messageId & 0xff]), text(filter), Buffer.from([0])]));

export interface RawConnection {
  socket: TLSSocket;
  send(bytes: Buffer): void;
  /** Takes the next packet of this type (2 CONNACK, 9 SUBACK, 13 PINGRESP...) the broker sends; undefined if it closes first. */
  next(type: number): Promise<Buffer | undefined>;
  /** The CONNACK return code, or undefined if the broker closed without one. */
  connack(): Promise<number | undefined>;
  closed: Promise<void>;
}

/** A mutual-TLS connection to the broker that speaks MQTT only as bytes the test writes. */
export async function rawConnection(port: number, tls: DeviceTls): Promise<RawConnection> {
  const socket = tlsConnect({ host: 'localhost', port, ca: tls.ca, cert: tls.cert, key: tls.key });
  socket.on('error', () => {});
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => resolve());
    socket.once('close', () => reject(new Error('the TLS handshake did not complete')));
  });
  let received = Buffer.alloc(0);
  const packets: Buffer[] = [];
  const waiters = new Set<() => void>();
  socket.on('data', (chunk: Buffer) => {
    received = Buffer.concat([received, chunk]);
    for (;;) {
      // Fixed header: type byte, then a remaining length of up to four 7-bit groups.
      let length = 0;
      let at = 1;
      for (let shift = 0; at < received.length; shift += 7) {
        const byte = received[at++]!;
        length += (byte & 0x7f) << shift;
        if (!(byte & 0x80)) break;
      }
      if (received.length < 2 || received.length < at + length) break;
      packets.push(received.subarray(0, at + length));
      received = received.subarray(at + length);
    }
    for (const wake of waiters) wake();
  });
  socket.once('close', () => {
    for (const wake of waiters) wake();
  });
  const next = (type: number) =>
    new Promise<Buffer | undefined>((resolve) => {
      const check = () => {
        const index = packets.findIndex((p) => p[0]! >> 4 === type);
        if (index < 0 && !socket.destroyed) return;
        waiters.delete(check);
        resolve(index < 0 ? undefined : packets.splice(index, 1)[0]);
      };
      waiters.add(check);
      check();
    });
  return {
    socket,
    send: (bytes) => socket.write(bytes),
    next,
    connack: async () => (await next(2))?.at(-1),
    closed,
  };
}
