/**
 * The benchmark's MQTT clients, in a process of their own (forked by the benchmark) so their CPU is
 * not the broker's and their event loop is not the orchestrator's. Speaks raw MQTT 3.1.1 over TLS
 * (mqtt-wire.ts). Every device's secure context (key, certificate, trusted root) is built when the
 * devices arrive, before any clock starts, so a timed connect costs the broker a handshake and a
 * CONNECT and costs this side only the handshake.
 *
 * Orders arrive over IPC one at a time and each gets one answer.
 */
import { performance } from 'node:perf_hooks';
import tls from 'node:tls';
import { mapLimited } from '../core/concurrency.js';
import { connectPacket, DISCONNECT, PacketType, packetReader, PINGREQ, publishPacket, type Packet } from './mqtt-wire.js';

export interface LoadDevice {
  id: string;
  certificatePem: string;
  keyPem: string;
}

export type LoadOrder =
  | { type: 'devices'; devices: LoadDevice[]; caPem: string }
  /** Connect each device, wait for CONNACK, DISCONNECT, wait for the broker to close. */
  | { type: 'connects'; port: number; resume: boolean; concurrency: number; /** The first `count` devices; all when unset. */ count?: number }
  /** Connect each device and keep it. */
  /** Connect each device and keep it; with `ports`, device i goes to ports[i % ports.length] (several nodes). */
  | { type: 'hold'; port: number; ports?: number[]; concurrency: number }
  | { type: 'publish'; qos: 0 | 1; perDevice: number; concurrency: number }
  | { type: 'release' };

export interface ConnectRun {
  /** From tls.connect to CONNACK, one per connect that succeeded. */
  latenciesMs: number[];
  seconds: number;
  failures: number;
  firstFailure?: string;
  /** How many handshakes resumed a saved TLS session. */
  resumed: number;
}

export type LoadAnswer =
  | { type: 'ready' }
  | ({ type: 'connected' } & ConnectRun)
  | { type: 'published'; messages: number; seconds: number }
  | { type: 'released'; dropped: number }
  | { type: 'failed'; message: string };

/** How long a broker gets to answer before a connect counts as failed. */
const ANSWER_TIMEOUT_MS = 30_000;
/** A TLS 1.3 ticket arrives just after the handshake; a connect waits this long for it before leaving. */
const TICKET_WAIT_MS = 1_000;
const KEEPALIVE_SECONDS = 600;
const PAYLOAD = Buffer.alloc(64, 0x61);

let devices: LoadDevice[] = [];
let contexts: tls.SecureContext[] = [];
/** Per broker port, per device: the last TLS session ticket it was given. */
const sessions = new Map<number, Map<number, Buffer>>();

/** A connection with its packets handed to whoever waits for the next one of a type. */
interface Connection {
  socket: tls.TLSSocket;
  next(type: number): Promise<Packet>;
  closed: Promise<void>;
  isClosed(): boolean;
}

function connection(socket: tls.TLSSocket): Connection {
  const read = packetReader();
  const waiting = new Map<number, ((packet: Packet) => void)[]>();
  const failures = new Set<(error: Error) => void>();
  let closed = false;
  const ended = new Promise<void>((resolve) =>
    socket.once('close', () => {
      closed = true;
      for (const fail of failures) fail(new Error('the broker closed the connection'));
      resolve();
    }),
  );
  socket.on('error', () => undefined);
  socket.on('data', (chunk: Buffer) => {
    for (const packet of read(chunk)) waiting.get(packet.type)?.shift()?.(packet);
  });
  return {
    socket,
    closed: ended,
    isClosed: () => closed,
    next(type) {
      if (closed) return Promise.reject(new Error('the broker closed the connection'));
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no answer (packet type ${type}) in ${ANSWER_TIMEOUT_MS} ms`)), ANSWER_TIMEOUT_MS);
        const fail = (error: Error) => {
          clearTimeout(timer);
          reject(error);
        };
        failures.add(fail);
        const list = waiting.get(type) ?? [];
        list.push((packet) => {
          clearTimeout(timer);
          failures.delete(fail);
          resolve(packet);
        });
        waiting.set(type, list);
      });
    },
  };
}

interface Opened {
  conn: Connection;
  latencyMs: number;
  reused: boolean;
  ticket: Promise<void>;
}

/** Opens one device's connection and waits for CONNACK; fails on a refusal or an early close. */
async function open(port: number, index: number, session: Buffer | undefined): Promise<Opened> {
  const started = performance.now();
  const socket = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', secureContext: contexts[index]!, session });
  socket.setNoDelay(true);
  const tickets = sessions.get(port) ?? new Map<number, Buffer>();
  sessions.set(port, tickets);
  const ticket = new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, TICKET_WAIT_MS);
    socket.on('session', (ticket: Buffer) => {
      tickets.set(index, ticket);
      clearTimeout(timer);
      resolve();
    });
  });
  const conn = connection(socket);
  // Queued by Node until the handshake is done: the CONNECT goes out in the first flight after it.
  socket.write(connectPacket(devices[index]!.id, KEEPALIVE_SECONDS));
  try {
    const connack = await conn.next(PacketType.connack);
    if (connack.body[1] !== 0) throw new Error(`CONNACK return code ${connack.body[1]}`);
  } catch (error) {
    socket.destroy();
    throw error;
  }
  return { conn, latencyMs: performance.now() - started, reused: socket.isSessionReused(), ticket };
}

/** DISCONNECT, then wait for the broker to close (so its close work falls in the window). */
async function leave(conn: Connection): Promise<void> {
  conn.socket.end(DISCONNECT);
  const timer = setTimeout(() => conn.socket.destroy(), ANSWER_TIMEOUT_MS);
  await conn.closed;
  clearTimeout(timer);
}

async function eachDevice(
  count: number,
  concurrency: number,
  work: (index: number) => Promise<Opened>,
): Promise<{ run: ConnectRun; opened: (Opened | undefined)[] }> {
  const run: ConnectRun = { latenciesMs: [], seconds: 0, failures: 0, resumed: 0 };
  const started = performance.now();
  const opened = await mapLimited(devices.slice(0, count), concurrency, async (_device, index) => {
    try {
      const result = await work(index);
      run.latenciesMs.push(result.latencyMs);
      if (result.reused) run.resumed++;
      return result;
    } catch (error) {
      run.failures++;
      run.firstFailure ??= `${devices[index]!.id}: ${(error as Error).message}`;
      return undefined;
    }
  });
  run.seconds = (performance.now() - started) / 1000;
  return { run, opened };
}

async function connects(port: number, resume: boolean, concurrency: number, count: number): Promise<ConnectRun> {
  const tickets = sessions.get(port);
  const { run } = await eachDevice(count, concurrency, async (index) => {
    const opened = await open(port, index, resume ? tickets?.get(index) : undefined);
    // A full connect keeps the ticket for the resumed pass that follows.
    if (!resume) await opened.ticket;
    await leave(opened.conn);
    return opened;
  });
  return run;
}

let held: Connection[] = [];

async function hold(ports: number[], concurrency: number): Promise<ConnectRun> {
  const { run, opened } = await eachDevice(devices.length, concurrency, (index) => open(ports[index % ports.length]!, index, undefined));
  held = opened.flatMap((o) => (o ? [o.conn] : []));
  return run;
}

/**
 * Each held device publishes `perDevice` messages to its own topic. QoS 1 waits for each PUBACK
 * before the next (one in flight, as a device does); QoS 0 ends with a PINGREQ, whose PINGRESP
 * says the broker has read everything before it.
 */
async function publish(qos: 0 | 1, perDevice: number, concurrency: number): Promise<{ messages: number; seconds: number }> {
  const started = performance.now();
  await mapLimited(held, concurrency, async (conn, index) => {
    const topic = `devices/${devices[index]!.id}/bench`;
    for (let i = 1; i <= perDevice; i++) {
      if (qos === 1) {
        const acked = conn.next(PacketType.puback);
        conn.socket.write(publishPacket(topic, PAYLOAD, 1, i));
        await acked;
      } else {
        conn.socket.write(publishPacket(topic, PAYLOAD, 0));
      }
    }
    const pong = conn.next(PacketType.pingresp);
    conn.socket.write(PINGREQ);
    await pong;
  });
  return { messages: held.length * perDevice, seconds: (performance.now() - started) / 1000 };
}

async function release(): Promise<number> {
  const dropped = held.filter((conn) => conn.isClosed()).length;
  await Promise.all(held.map((conn) => (conn.isClosed() ? undefined : leave(conn))));
  held = [];
  return dropped;
}

async function obey(order: LoadOrder): Promise<LoadAnswer> {
  switch (order.type) {
    case 'devices':
      devices = order.devices;
      contexts = devices.map((d) => tls.createSecureContext({ key: d.keyPem, cert: d.certificatePem, ca: order.caPem }));
      return { type: 'ready' };
    case 'connects':
      return { type: 'connected', ...(await connects(order.port, order.resume, order.concurrency, order.count ?? devices.length)) };
    case 'hold':
      return { type: 'connected', ...(await hold(order.ports ?? [order.port], order.concurrency)) };
    case 'publish':
      return { type: 'published', ...(await publish(order.qos, order.perDevice, order.concurrency)) };
    case 'release':
      return { type: 'released', dropped: await release() };
  }
}

if (!process.send) {
  process.stderr.write('load-generator.js is started by the benchmark (npm run bench) over IPC, not by hand\n');
  process.exit(2);
}
process.on('message', (order: LoadOrder) => {
  obey(order).then(
    (answer) => process.send!(answer),
    (error: Error) => process.send!({ type: 'failed', message: error.message } satisfies LoadAnswer),
  );
});
process.on('disconnect', () => process.exit(0));
