/**
 * The process a comparison system runs in, so its CPU and memory read from /proc are its own:
 * - `aedes`: aedes as its README starts it, with an authenticate that admits everyone, behind Node
 *   TLS with the client certificate checked: what fleet-auth adds nothing to.
 * - `floor`: a bare Node TLS server with the same check that answers CONNECT with CONNACK, PUBLISH
 *   QoS 1 with PUBACK and PINGREQ with PINGRESP: the least any Node MQTT broker can spend.
 * Forked by the benchmark, told over IPC what to host, replies with its port.
 */
import { once } from 'node:events';
import tls from 'node:tls';
import { Aedes } from 'aedes';
import {
  connackPacket,
  PacketType,
  packetReader,
  PINGRESP,
  pubackPacket,
  publishPacketId,
} from './mqtt-wire.js';

export type HostedKind = 'aedes' | 'floor';

export interface HostOrder {
  kind: HostedKind;
  tls: { key: string; cert: string; ca: string };
}

export type HostAnswer = { type: 'listening'; port: number } | { type: 'failed'; message: string };

/** The floor: one reader per socket, one answer per packet that needs one, nothing kept. */
function floorSession(socket: tls.TLSSocket): void {
  const read = packetReader();
  socket.on('data', (chunk: Buffer) => {
    let packets;
    try {
      packets = read(chunk);
    } catch {
      socket.destroy();
      return;
    }
    for (const packet of packets) {
      if (packet.type === PacketType.connect) socket.write(connackPacket());
      else if (packet.type === PacketType.publish && ((packet.flags >> 1) & 3) === 1) socket.write(pubackPacket(publishPacketId(packet.body)));
      else if (packet.type === PacketType.pingreq) socket.write(PINGRESP);
      else if (packet.type === PacketType.disconnect) socket.end();
    }
  });
  socket.on('error', () => socket.destroy());
}

async function host(order: HostOrder): Promise<{ port: number; close(): Promise<void> }> {
  const options = { ...order.tls, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' as const };
  let handle: (socket: tls.TLSSocket) => void;
  let closeBroker = async () => {};
  if (order.kind === 'aedes') {
    const aedes = await Aedes.createBroker({ authenticate: (_client, _username, _password, done) => done(null, true) });
    handle = (socket) => aedes.handle(socket);
    closeBroker = () => new Promise<void>((resolve) => aedes.close(() => resolve()));
  } else {
    handle = floorSession;
  }
  const server = tls.createServer(options, handle);
  // A client that gives up mid-handshake is the load generator's business, not a reason to stop.
  server.on('tlsClientError', () => undefined);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as { port: number }).port,
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      await closeBroker();
      await closed;
    },
  };
}

if (!process.send) {
  process.stderr.write('system-host.js is started by the benchmark (npm run bench) over IPC, not by hand\n');
  process.exit(2);
}
process.once('message', (order: HostOrder) => {
  host(order).then(
    (hosted) => {
      process.send!({ type: 'listening', port: hosted.port } satisfies HostAnswer);
      process.once('disconnect', () => void hosted.close().finally(() => process.exit(0)));
    },
    (error: Error) => {
      process.send!({ type: 'failed', message: error.message } satisfies HostAnswer, () => process.exit(1));
    },
  );
});
