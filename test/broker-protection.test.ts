import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { Aedes } from 'aedes';
import type { MqttClient } from 'mqtt';
import {
  checkKeepalive,
  connectionGate,
  gatedServer,
  guardPacketSize,
  packetSizeMeter,
  type PacketRefusal,
  rateKeyOf,
} from '../broker/protection.js';
import { loadConfig } from '../core/config.js';
import { silentLogger } from '../core/log.js';
import { type CertificateAuthority, loadAuthority } from '../core/pki/authority.js';
import { secureContextOptions } from '../core/pki/tls.js';
import { x509 } from '../core/pki/x509.js';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { closed, connectDevice, type DeviceTls } from './support/mqtt.js';

/** A clock the test moves by hand. */
function manualClock(start = 1_000_000) {
  let now = start;
  return { clock: () => now, advance: (ms: number) => void (now += ms) };
}

describe('connection gate: per-address rate', () => {
  test('an address may open `burst` connections at once, then one per 1/rate seconds', () => {
    const time = manualClock();
    const gate = connectionGate({ perAddressPerSecond: 2, burst: 3, maxConnections: 1000, clock: time.clock });
    assert.deepEqual([1, 2, 3, 4].map(() => gate.admit('192.0.2.1')), ['ok', 'ok', 'ok', 'rate_limited']);
    time.advance(499);
    assert.equal(gate.admit('192.0.2.1'), 'rate_limited', 'half a token is not a token');
    time.advance(1);
    assert.equal(gate.admit('192.0.2.1'), 'ok');
    assert.equal(gate.admit('192.0.2.1'), 'rate_limited');
    time.advance(60_000);
    assert.deepEqual([1, 2, 3, 4].map(() => gate.admit('192.0.2.1')), ['ok', 'ok', 'ok', 'rate_limited'], 'refills to burst, no further');
  });

  test('one address exhausting its rate leaves the others alone', () => {
    const time = manualClock();
    const gate = connectionGate({ perAddressPerSecond: 1, burst: 2, maxConnections: 1000, clock: time.clock });
    gate.admit('192.0.2.1');
    gate.admit('192.0.2.1');
    assert.equal(gate.admit('192.0.2.1'), 'rate_limited');
    assert.equal(gate.admit('192.0.2.2'), 'ok');
    assert.equal(gate.admit('2001:db8::7'), 'ok');
  });

  test('a clock that steps back neither refills nor drains a bucket', () => {
    const time = manualClock();
    const gate = connectionGate({ perAddressPerSecond: 1, burst: 2, maxConnections: 1000, clock: time.clock });
    assert.equal(gate.admit('192.0.2.1'), 'ok');
    time.advance(-10_000);
    assert.equal(gate.admit('192.0.2.1'), 'ok', 'the second token is still there');
    assert.equal(gate.admit('192.0.2.1'), 'rate_limited');
  });

  test('IPv6 addresses of one /64 share a rate; an IPv4-mapped address is its IPv4 address', () => {
    const time = manualClock();
    const gate = connectionGate({ perAddressPerSecond: 1, burst: 2, maxConnections: 1000, clock: time.clock });
    assert.equal(gate.admit('2001:db8:1:2::1'), 'ok');
    assert.equal(gate.admit('2001:db8:1:2:ffff:ffff:ffff:9'), 'ok');
    assert.equal(gate.admit('2001:DB8:1:2:0:0:0:42'), 'rate_limited', 'a third host of the same /64');
    assert.equal(gate.admit('2001:db8:1:3::1'), 'ok', 'the next /64 is someone else');
    assert.equal(gate.admit('::ffff:198.51.100.4'), 'ok');
    assert.equal(gate.admit('198.51.100.4'), 'ok');
    assert.equal(gate.admit('::ffff:198.51.100.4'), 'rate_limited');
  });

  test('rate keys: /64 prefixes written out, zones dropped, odd input kept as it is', () => {
    assert.equal(rateKeyOf('2001:db8::1'), '2001:db8:0:0::/64');
    assert.equal(rateKeyOf('2001:0db8:0000:0001:0000:0000:0000:0001'), '2001:db8:0:1::/64');
    assert.equal(rateKeyOf('fe80::1%eth0'), 'fe80:0:0:0::/64');
    assert.equal(rateKeyOf('::1'), '0:0:0:0::/64');
    assert.equal(rateKeyOf('64:ff9b::192.0.2.33'), '64:ff9b:0:0::/64');
    assert.equal(rateKeyOf('::FFFF:10.1.2.3'), '10.1.2.3');
    assert.equal(rateKeyOf('127.0.0.1'), '127.0.0.1');
    assert.equal(rateKeyOf('1:2:3:4:5:6:7:8:9'), '1:2:3:4:5:6:7:8:9', 'not an address: its own key');
    assert.equal(rateKeyOf(''), '');
  });
});

describe('connection gate: global cap', () => {
  test('refuses past maxConnections until one is released', () => {
    const time = manualClock();
    const gate = connectionGate({ perAddressPerSecond: 100, burst: 100, maxConnections: 2, clock: time.clock });
    assert.equal(gate.admit('192.0.2.1'), 'ok');
    assert.equal(gate.admit('192.0.2.2'), 'ok');
    assert.equal(gate.admit('192.0.2.3'), 'too_many_connections');
    assert.equal(gate.open, 2);
    gate.release('192.0.2.1');
    assert.equal(gate.open, 1);
    assert.equal(gate.admit('192.0.2.3'), 'ok');
  });

  test('a release for an address with nothing open changes nothing', () => {
    const time = manualClock();
    const gate = connectionGate({ perAddressPerSecond: 100, burst: 100, maxConnections: 2, clock: time.clock });
    gate.admit('192.0.2.1');
    gate.admit('192.0.2.2');
    gate.release('192.0.2.9');
    gate.release('192.0.2.1');
    gate.release('192.0.2.1');
    assert.equal(gate.open, 1, 'released twice, counted once');
    assert.equal(gate.admit('192.0.2.3'), 'ok');
    assert.equal(gate.admit('192.0.2.4'), 'too_many_connections');
  });

  test('attempts refused for the cap still spend the address\'s tokens', () => {
    const time = manualClock();
    const gate = connectionGate({ perAddressPerSecond: 1, burst: 3, maxConnections: 1, clock: time.clock });
    assert.equal(gate.admit('192.0.2.1'), 'ok');
    assert.deepEqual([1, 2, 3].map(() => gate.admit('192.0.2.2')), ['too_many_connections', 'too_many_connections', 'too_many_connections']);
    gate.release('192.0.2.1');
    assert.equal(gate.admit('192.0.2.2'), 'rate_limited');
  });

  test('rejects options that would admit nothing or everything', () => {
    const clock = () => 0;
    assert.throws(() => connectionGate({ perAddressPerSecond: 0, burst: 1, maxConnections: 1, clock }), RangeError);
    assert.throws(() => connectionGate({ perAddressPerSecond: 1, burst: 0, maxConnections: 1, clock }), RangeError);
    assert.throws(() => connectionGate({ perAddressPerSecond: 1, burst: 1, maxConnections: 0, clock }), RangeError);
    assert.throws(() => connectionGate({ perAddressPerSecond: NaN, burst: 1, maxConnections: 1, clock }), RangeError);
  });
});

describe('connection gate: bounded memory', () => {
  test('remembers at most maxAddresses, forgetting the least recently seen', () => {
    const time = manualClock();
    const gate = connectionGate({ perAddressPerSecond: 1, burst: 1, maxConnections: 1_000_000, maxAddresses: 1000, clock: time.clock });
    for (let i = 0; i < 5000; i++) gate.admit(`10.0.${i >> 8}.${i & 255}`);
    assert.equal(gate.trackedAddresses, 1000);
    assert.equal(gate.admit('10.0.19.135'), 'rate_limited', 'the most recent (index 4999) is still remembered');
    assert.equal(gate.admit('10.0.0.0'), 'ok', 'the first was forgotten, so it starts afresh');
  });

  test('forgets addresses whose bucket has refilled, since a full bucket is what a new one is', () => {
    const time = manualClock();
    const gate = connectionGate({ perAddressPerSecond: 10, burst: 20, maxConnections: 1_000_000, clock: time.clock });
    for (let i = 0; i < 500; i++) gate.admit(`10.1.${i >> 8}.${i & 255}`);
    assert.equal(gate.trackedAddresses, 500);
    time.advance(1999);
    gate.admit('192.0.2.1');
    assert.equal(gate.trackedAddresses, 501, 'not yet refilled (20 tokens at 10/s take 2 s)');
    time.advance(1);
    gate.admit('192.0.2.2');
    assert.equal(gate.trackedAddresses, 2);
  });
});

describe('packet size meter', () => {
  const PINGREQ = [0xc0, 0x00];
  const publishHeader = (remaining: number[]) => [0x30, ...remaining];

  test('lets through packets up to the limit, counting the fixed header', () => {
    const meter = packetSizeMeter(130);
    // 127 bytes of body behind a 2-byte header: 129 in all.
    assert.equal(meter(Uint8Array.from([...publishHeader([0x7f]), ...new Array(127).fill(0x61), ...PINGREQ])), undefined);
    // 127 body bytes behind a 3-byte header (0x80 0x01 = 128 would be 131; 0xff 0x00 is not minimal but legal to parse): 130.
    assert.equal(packetSizeMeter(130)(Uint8Array.from([0x30, 0xff, 0x00, ...new Array(127).fill(0)])), undefined);
    assert.deepEqual(packetSizeMeter(130)(Uint8Array.from([0x30, 0x80, 0x01])), { reason: 'packet_too_large', declaredBytes: 131, maxBytes: 130 });
  });

  test('refuses on the header alone, before any of the body arrives', () => {
    const meter = packetSizeMeter(262_144);
    assert.deepEqual(meter(Uint8Array.from([0x10, 0xff, 0xff, 0xff, 0x7f])), {
      reason: 'packet_too_large',
      declaredBytes: 268_435_460,
      maxBytes: 262_144,
    });
  });

  test('follows headers and bodies split across chunks at any byte', () => {
    // 300 bytes of body (0xac 0x02), a PINGREQ, then a header declaring 1 MiB (0x80 0x80 0x40).
    const stream = Uint8Array.from([0x32, 0xac, 0x02, ...new Array(300).fill(7), ...PINGREQ, 0x30, 0x80, 0x80, 0x40]);
    for (let cut = 1; cut < stream.length; cut++) {
      const meter = packetSizeMeter(4096);
      const first = meter(stream.subarray(0, cut));
      const second = first ?? meter(stream.subarray(cut));
      assert.deepEqual(second, { reason: 'packet_too_large', declaredBytes: 1 + 3 + 1_048_576, maxBytes: 4096 }, `cut at ${cut}`);
      assert.equal(first, undefined, `nothing before the last header is refused (cut at ${cut})`);
    }
  });

  test('byte by byte, a stream of small packets passes', () => {
    const meter = packetSizeMeter(1024);
    const one = [0x30, 0x0a, 0x00, 0x03, 0x61, 0x2f, 0x62, 0x68, 0x65, 0x6c, 0x6c, 0x6f];
    for (let i = 0; i < 50; i++) for (const byte of [...one, ...PINGREQ]) assert.equal(meter(Uint8Array.of(byte)), undefined);
  });

  test('a remaining length with a fifth byte is malformed, and a refusal sticks', () => {
    const meter = packetSizeMeter(268_435_460);
    assert.deepEqual(meter(Uint8Array.from([0x30, 0x80, 0x80, 0x80, 0x80])), { reason: 'malformed_packet' });
    assert.deepEqual(meter(Uint8Array.from(PINGREQ)), { reason: 'malformed_packet' });
  });
});

describe('keepalive bound', () => {
  test('accepts 1..max seconds, refuses 0 (never checked) and above; max 0 accepts any', () => {
    assert.equal(checkKeepalive(60, 1200), 'ok');
    assert.equal(checkKeepalive(1200, 1200), 'ok');
    assert.equal(checkKeepalive(1201, 1200), 'keepalive_too_long');
    assert.equal(checkKeepalive(0, 1200), 'keepalive_too_long');
    assert.equal(checkKeepalive(0, 0), 'ok');
    assert.equal(checkKeepalive(65_535, 0), 'ok');
  });
});

/** Our CA code in a scratch directory, and one client certificate from it: enough TLS for these tests. */
let dataDir: string;
let ca: CertificateAuthority;
let device: DeviceTls;
before(async () => {
  dataDir = await mkdtemp(path.join(os.tmpdir(), 'fleet-protection-'));
  ca = await loadAuthority({ dataDir, hostnames: [], log: silentLogger() });
  const identity = await createDeviceIdentity('guard-1');
  const certificate = await ca.sign({
    subject: 'CN=guard-1',
    publicKey: identity.csr.publicKey,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 3_600_000),
    extensions: [new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth])],
  });
  device = { ca: ca.rootPem, cert: certificate.toString('pem'), key: identity.keyPem };
});
after(async () => {
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

/** A TLS client connection's fate: the handshake completed, or the connection ended before it did. */
function tlsConnect(port: number): Promise<{ outcome: 'secure' | 'refused'; socket: tls.TLSSocket }> {
  const socket = tls.connect({ port, host: '127.0.0.1', servername: 'localhost', ...device });
  return new Promise((resolve) => {
    socket.on('error', () => undefined);
    socket.once('secureConnect', () => resolve({ outcome: 'secure', socket }));
    socket.once('close', () => resolve({ outcome: 'refused', socket }));
  });
}

describe('gated TLS server on real sockets', () => {
  test('a refused connection never reaches TLS; an admitted one frees its slot when it closes', async () => {
    const time = manualClock();
    const gate = connectionGate({ perAddressPerSecond: 1, burst: 2, maxConnections: 1, clock: time.clock });
    const serverSides: tls.TLSSocket[] = [];
    const tlsServer = tls.createServer({ ...secureContextOptions(ca), requestCert: true, rejectUnauthorized: true }, (s) => void serverSides.push(s));
    const tlsErrors: Error[] = [];
    tlsServer.on('tlsClientError', (error) => tlsErrors.push(error));
    const refused: [string, string][] = [];
    const front = gatedServer((socket) => tlsServer.emit('connection', socket), gate, (decision, address) => refused.push([decision, address]));
    front.listen(0, '127.0.0.1');
    await once(front, 'listening');
    const port = (front.address() as { port: number }).port;
    try {
      // With TLS 1.3 the client may finish its handshake before the server has; wait for both sides.
      const firstAccepted = once(tlsServer, 'secureConnection');
      const first = await tlsConnect(port);
      assert.equal(first.outcome, 'secure');
      const [firstServerSide] = (await firstAccepted) as [tls.TLSSocket];
      assert.equal(gate.open, 1);
      assert.equal((await tlsConnect(port)).outcome, 'refused');
      assert.deepEqual(refused, [['too_many_connections', '127.0.0.1']]);

      const released = once(firstServerSide, 'close');
      first.socket.end();
      await released;
      assert.equal(gate.open, 0, 'the close released the slot');
      assert.equal((await tlsConnect(port)).outcome, 'refused', 'both tokens are spent');
      assert.deepEqual(refused.at(-1), ['rate_limited', '127.0.0.1']);
      time.advance(1000);
      const laterAccepted = once(tlsServer, 'secureConnection');
      const later = await tlsConnect(port);
      assert.equal(later.outcome, 'secure');
      await laterAccepted;
      later.socket.end();
      assert.deepEqual(tlsErrors, [], 'refusals are not also TLS errors');
      assert.equal(serverSides.length, 2, 'only admitted connections reached the TLS server');
    } finally {
      await new Promise<void>((resolve) => front.close(() => resolve()));
      for (const s of serverSides) s.destroy();
    }
  });
});

describe('packet size guard on real TLS sockets in front of aedes', () => {
  const LIMIT = 4096;
  let aedes: Aedes;
  let server: tls.Server;
  let port: number;
  const refusals: PacketRefusal[] = [];

  before(async () => {
    aedes = await Aedes.createBroker();
    server = tls.createServer({ ...secureContextOptions(ca), requestCert: true, rejectUnauthorized: true }, (socket) => {
      guardPacketSize(socket, LIMIT, (refusal) => refusals.push(refusal));
      aedes.handle(socket);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    port = (server.address() as { port: number }).port;
  });
  after(async () => {
    await new Promise<void>((resolve) => aedes?.close(() => resolve()));
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  });

  /** Every message on `topic` until `marker` arrives. */
  const collectUntil = (client: MqttClient, topic: string, marker: string): Promise<string[]> =>
    new Promise((resolve) => {
      const seen: string[] = [];
      client.on('message', (t, payload) => {
        if (t !== topic) return;
        const text = payload.toString();
        if (text === marker) return resolve(seen);
        seen.push(text);
      });
    });

  test('a publish under the limit is delivered; one over it closes the publisher and reaches nobody', async () => {
    const subscriber = await connectDevice(port, 'sub-1', device);
    assert.equal(subscriber.outcome, 'connected');
    await subscriber.client.subscribeAsync('t/guard', { qos: 0 });
    const received = collectUntil(subscriber.client, 't/guard', 'marker');

    const publisher = await connectDevice(port, 'pub-1', device);
    assert.equal(publisher.outcome, 'connected');
    const small = 'a'.repeat(LIMIT - 100);
    await publisher.client.publishAsync('t/guard', small, { qos: 1 });
    const publisherClosed = closed(publisher.client);
    // Well inside one TLS record, so the whole packet arrives in the same chunk as its header.
    publisher.client.publish('t/guard', 'b'.repeat(LIMIT + 100), { qos: 0 });
    await publisherClosed;
    publisher.client.end(true);

    const marker = await connectDevice(port, 'pub-2', device);
    await marker.client.publishAsync('t/guard', 'marker', { qos: 1 });
    assert.deepEqual(await received, [small], 'only the small message, and the oversized one never');
    assert.ok(subscriber.client.connected, 'the subscriber keeps its session');
    assert.equal(refusals.length, 1);
    assert.equal(refusals[0]!.reason, 'packet_too_large');
    assert.ok(refusals[0]!.reason === 'packet_too_large' && refusals[0]!.declaredBytes > LIMIT);
    await marker.client.endAsync();
    await subscriber.client.endAsync();
  });

  test('a CONNECT declaring 256 MiB is cut off at its header, before any MQTT session exists', async () => {
    const before = refusals.length;
    const socket = tls.connect({ port, host: '127.0.0.1', servername: 'localhost', ...device });
    await once(socket, 'secureConnect');
    const ended = once(socket, 'close');
    // The fixed header of a CONNECT and the first bytes of its body; the rest never comes.
    socket.write(Buffer.from([0x10, 0xff, 0xff, 0xff, 0x7f, 0x00, 0x04, 0x4d, 0x51, 0x54, 0x54]));
    await ended;
    assert.equal(refusals.length, before + 1);
    assert.deepEqual(refusals.at(-1), { reason: 'packet_too_large', declaredBytes: 268_435_460, maxBytes: LIMIT });
  });
});

describe('protection configuration', () => {
  test('defaults, and values out of range refused by name', () => {
    const config = loadConfig({});
    assert.equal(config.brokerConnectRate, 50);
    assert.equal(config.brokerConnectBurst, 100);
    assert.equal(config.brokerMaxConnections, undefined, 'derived from the open-file limit');
    assert.equal(config.brokerMaxPacketBytes, 262_144);
    assert.equal(config.brokerKeepaliveMaxSeconds, 1200);
    assert.equal(loadConfig({ FLEET_BROKER_CONNECT_RATE: '0.5' }).brokerConnectRate, 0.5);
    assert.equal(loadConfig({ FLEET_BROKER_KEEPALIVE_MAX: '0' }).brokerKeepaliveMaxSeconds, 0);
    for (const [name, value] of [
      ['FLEET_BROKER_CONNECT_RATE', '0'],
      ['FLEET_BROKER_CONNECT_BURST', '0'],
      ['FLEET_BROKER_MAX_CONNECTIONS', 'many'],
      ['FLEET_BROKER_MAX_PACKET_BYTES', '100'],
      ['FLEET_BROKER_MAX_PACKET_BYTES', '300000000'],
      ['FLEET_BROKER_KEEPALIVE_MAX', '70000'],
    ] as const) {
      assert.throws(() => loadConfig({ [name]: value }), new RegExp(name), `${name}=${value}`);
    }
  });
});
