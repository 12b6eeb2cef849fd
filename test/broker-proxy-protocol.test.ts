import assert from 'node:assert/strict';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import tls from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { MqttClient } from 'mqtt';
import { Command, IPv4Address, IPv4ProxyAddress, IPv6Address, IPv6ProxyAddress, TransportProtocol, V2ProxyProtocol } from 'proxy-protocol-js';
import type { Refusal } from '../broker/admission.js';
import { parseProxyHeader } from '../broker/proxy-protocol.js';
import { type EnrolledDevice, startTestFleet, type TestFleet } from './support/fleet.js';
import { capturingLogger } from './support/log.js';
import { findNginx, STREAM_MODULE, startNginx } from './support/nginx.js';

/*
 * PROXY protocol at the broker's front door, through a running fleet that trusts 127.0.0.1 as its
 * load balancer: raw TCP writes the header a balancer would, then TLS and MQTT run on the same
 * socket. Connections from 127.0.0.2 come from an address that is not a trusted proxy.
 */

const UNTRUSTED = '127.0.0.2';
const nginx = await findNginx();
const skipNginx = !nginx ? 'nginx is not installed' : !existsSync(STREAM_MODULE) ? 'nginx stream module is not installed (apt-get install libnginx-mod-stream)' : false;
const refusals = (t: TestFleet, reason: Refusal) => t.fleet.broker.refusals.get(reason) ?? 0;

async function eventually<T>(check: () => Promise<T> | T, what: string): Promise<T> {
  for (let i = 0; i < 200; i++) {
    const value = await check();
    if (value) return value;
    await sleep(50);
  }
  throw new Error(`never happened: ${what}`);
}

/** A TCP connection to `port` that has sent `preface` (a PROXY header, or anything) and nothing else yet. */
async function tcpWith(port: number, preface: Buffer | string, localAddress?: string): Promise<net.Socket> {
  const socket = net.connect({ host: '127.0.0.1', port, localAddress });
  socket.on('error', () => {});
  await once(socket, 'connect');
  if (preface.length > 0) socket.write(preface);
  return socket;
}

/** Resolves once the broker has closed the connection; throws if it never does. */
const closed = (socket: net.Socket) => eventually(() => socket.destroyed, 'the broker closed the connection');

/** TLS as the device on an open socket: 'secure' when the handshake completed, 'closed' when the broker ended it first. */
function deviceTls(socket: net.Socket, device: EnrolledDevice, ca: string): { tls: tls.TLSSocket; handshake: Promise<'secure' | 'closed'> } {
  const secure = tls.connect({ socket, ca, cert: device.certificatePem, key: device.identity.keyPem, servername: 'localhost' });
  secure.on('error', () => {});
  const handshake = new Promise<'secure' | 'closed'>((resolve) => {
    secure.once('secureConnect', () => resolve('secure'));
    secure.once('close', () => resolve('closed'));
  });
  return { tls: secure, handshake };
}

/** MQTT.js on that TLS socket: 'connected' once CONNACK admitted the session. */
function mqttOver(socket: tls.TLSSocket, clientId: string): Promise<{ client: MqttClient; outcome: 'connected' | 'refused' }> {
  const client = new MqttClient(() => socket, { clientId, protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 10_000, keepalive: 60 });
  return new Promise((resolve) => {
    client.on('error', () => {});
    client.once('connect', () => resolve({ client, outcome: 'connected' }));
    client.once('close', () => resolve({ client, outcome: 'refused' }));
  });
}

const v1 = (source: string, family = 'TCP4', destination = '127.0.0.1') => `PROXY ${family} ${source} ${destination} 40000 8883\r\n`;

function v2(command: Command, address: IPv4ProxyAddress | IPv6ProxyAddress): Buffer {
  return Buffer.from(new V2ProxyProtocol(command, TransportProtocol.STREAM, address).build());
}
const v2ipv4 = (source: number[], command = Command.PROXY) =>
  v2(command, new IPv4ProxyAddress(IPv4Address.createFrom(source), 40000, IPv4Address.createFrom([127, 0, 0, 1]), 8883));

describe('PROXY header parsing', () => {
  test('addresses come out in one form, however the balancer wrote them', () => {
    const mapped = IPv6Address.createFrom([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 5]);
    const header = v2(Command.PROXY, new IPv6ProxyAddress(mapped, 1, IPv6Address.createFrom([]), 2));
    assert.deepEqual(parseProxyHeader(header), { done: true, header: { version: 2, source: { address: '203.0.113.5', port: 1 } }, length: header.length });
    assert.deepEqual(parseProxyHeader(Buffer.from(v1('2001:DB8:0::7', 'TCP6', '::1') + 'tls')), {
      done: true,
      header: { version: 1, source: { address: '2001:db8::7', port: 40000 } },
      length: v1('2001:DB8:0::7', 'TCP6', '::1').length,
    });
    assert.deepEqual(parseProxyHeader(Buffer.from('PROXY UNKNOWN\r\n')), { done: true, header: { version: 1 }, length: 15 });
  });

  test('a v2 header ends where its length says: TLVs are skipped, the bytes after it are the device\'s', () => {
    const header = v2ipv4([203, 0, 113, 8]);
    const withTlv = Buffer.concat([header, Buffer.from([0x04, 0x00, 0x03, 1, 2, 3])]);
    withTlv.writeUInt16BE(withTlv.length - 16, 14);
    const parsed = parseProxyHeader(Buffer.concat([withTlv, Buffer.from([0x16, 0x03, 0x01])]));
    assert.deepEqual(parsed, { done: true, header: { version: 2, source: { address: '203.0.113.8', port: 40000 } }, length: withTlv.length });
    assert.deepEqual(parseProxyHeader(withTlv.subarray(0, withTlv.length - 1)), { done: false }, 'incomplete: wait for the rest');
  });
});

describe('PROXY protocol at the broker front door', () => {
  let t: TestFleet;
  const captured = capturingLogger();
  before(async () => {
    t = await startTestFleet({
      log: captured.log,
      env: {
        FLEET_TRUSTED_PROXIES: '127.0.0.1',
        FLEET_BROKER_CONNECT_TIMEOUT: '3s',
        // Two connections per address, then (nearly) no refill: the rate test below runs out, nothing else does.
        FLEET_BROKER_CONNECT_RATE: '0.001',
        FLEET_BROKER_CONNECT_BURST: '2',
      },
    });
  });
  after(() => t?.close());
  const port = () => t.fleet.broker.port;
  const device = async (id: string) => t.api('GET', `/v1/devices/${id}`, { token: t.adminToken });
  const connectedAddress = async (id: string) => {
    const res = await t.api('GET', `/v1/devices/${id}/events`, { token: t.adminToken });
    return (res.json.events as { kind: string; address: string | null }[]).find((e) => e.kind === 'connected')?.address;
  };

  /** A device through the "balancer": header, TLS, CONNECT. */
  async function proxied(id: string, header: Buffer | string, from?: string) {
    const enrolled = await t.enroll(id);
    const raw = await tcpWith(port(), header, from);
    const { tls: secure } = deviceTls(raw, enrolled, t.rootPem);
    return mqttOver(secure, id);
  }

  test('a v1 header from the trusted proxy: admitted, and presence and events show the address it names', async () => {
    const session = await proxied('pp-v1', v1('203.0.113.7'));
    assert.equal(session.outcome, 'connected');
    const shown = await eventually(async () => ((await device('pp-v1')).json.connected ? (await device('pp-v1')).json : undefined), 'presence recorded');
    assert.equal(shown.peerAddress, '203.0.113.7');
    assert.equal(await eventually(() => connectedAddress('pp-v1'), 'connected event recorded'), '203.0.113.7');
    await session.client.endAsync();
  });

  test('a v2 header (IPv6 source) and a v2 LOCAL health check: admitted, with the named address and the proxy\'s own', async () => {
    const source = IPv6Address.createFrom([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x07]);
    const header = v2(Command.PROXY, new IPv6ProxyAddress(source, 40000, IPv6Address.createFrom([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]), 8883));
    const session = await proxied('pp-v2', header);
    assert.equal(session.outcome, 'connected');
    assert.equal(await eventually(() => connectedAddress('pp-v2'), 'connected event recorded'), '2001:db8::7');

    const local = await proxied('pp-local', v2ipv4([192, 0, 2, 99], Command.LOCAL));
    assert.equal(local.outcome, 'connected');
    assert.equal(await eventually(() => connectedAddress('pp-local'), 'connected event recorded'), '127.0.0.1');
    await Promise.all([session.client.endAsync(), local.client.endAsync()]);
  });

  test('a PROXY header from an address that is not a trusted proxy is refused and counted; a plain device there is admitted', async () => {
    const before = refusals(t, 'proxy_untrusted');
    for (const header of [v1('203.0.113.66'), v2ipv4([203, 0, 113, 66])]) {
      const raw = await tcpWith(port(), header, UNTRUSTED);
      await closed(raw);
    }
    await eventually(() => refusals(t, 'proxy_untrusted') === before + 2, 'both counted as proxy_untrusted');
    assert.deepEqual(
      captured.lines().filter((l) => l.reason === 'proxy_untrusted').map((l) => l.peer),
      [UNTRUSTED, UNTRUSTED],
      'logged with the connection\'s own address, never the forged one',
    );

    // Its own rate bucket: the two refusals above spent 127.0.0.2's burst.
    const direct = await proxied('pp-direct', Buffer.alloc(0), '127.0.0.3');
    assert.equal(direct.outcome, 'connected');
    assert.equal(await eventually(() => connectedAddress('pp-direct'), 'connected event recorded'), '127.0.0.3');
    await direct.client.endAsync();
  });

  test('from the trusted proxy, a missing, malformed, oversized or slow header is refused and counted, and the broker carries on', async () => {
    const enrolled = await t.enroll('pp-plain');
    const count = () => ({ missing: refusals(t, 'proxy_header_missing'), invalid: refusals(t, 'proxy_header_invalid'), timeout: refusals(t, 'connect_timeout') });
    const start = count();

    // No header: a device's TLS straight to the broker from the balancer's address.
    const plain = deviceTls(await tcpWith(port(), ''), enrolled, t.rootPem);
    assert.equal(await plain.handshake, 'closed');

    const v2Long = Buffer.concat([v2ipv4([203, 0, 113, 9]).subarray(0, 14), Buffer.from([0xff, 0xff])]);
    const v2BadVersion = v2ipv4([203, 0, 113, 9]);
    v2BadVersion[12] = 0x31;
    const v2Udp = v2ipv4([203, 0, 113, 9]);
    v2Udp[13] = 0x12;
    const invalid = [
      v1('not-an-address'),
      v1('203.0.113.9', 'TCP6'),
      'PROXY TCP4 203.0.113.9 127.0.0.1 70000 8883\r\n',
      `PROXY TCP4 ${'1'.repeat(120)}`,
      v2Long,
      v2BadVersion,
      v2Udp,
      'GET / HTTP/1.1\r\n\r\n',
    ];
    for (const bytes of invalid) await closed(await tcpWith(port(), bytes));
    // Half a header, then silence: the connect deadline covers the header too.
    await closed(await tcpWith(port(), 'PROXY TCP4 203.0.1'));
    // Gone before its first byte; reset halfway through a header.
    (await tcpWith(port(), '')).destroy();
    (await tcpWith(port(), 'PROXY TCP4 ')).resetAndDestroy();

    await eventually(() => {
      const now = count();
      return now.missing === start.missing + 4 && now.invalid === start.invalid + 7 && now.timeout === start.timeout + 1;
    }, `counted: ${JSON.stringify(count())} after ${JSON.stringify(start)}`);
    assert.ok(
      captured.lines().some((l) => l.reason === 'connect_timeout' && l.waitingFor === 'PROXY header'),
      'the slow header is counted as a connect timeout waiting for the header',
    );

    const after = await proxied('pp-after', v1('203.0.113.10'));
    assert.equal(after.outcome, 'connected', 'a good connection is still admitted');
    await after.client.endAsync();
  });

  test('the per-address rate limit applies to the address each header names, independently', async () => {
    const enrolled = await t.enroll('pp-rate');
    const attempt = async (source: string) => {
      const { tls: secure, handshake } = deviceTls(await tcpWith(port(), v1(source)), enrolled, t.rootPem);
      const outcome = await handshake;
      secure.destroy();
      return outcome;
    };
    const before = refusals(t, 'rate_limited');
    // Burst 2: a third connection named as 198.51.100.1 is refused before TLS; 198.51.100.2 has its own bucket.
    assert.deepEqual([await attempt('198.51.100.1'), await attempt('198.51.100.1'), await attempt('198.51.100.1')], ['secure', 'secure', 'closed']);
    assert.equal(await attempt('198.51.100.2'), 'secure');
    assert.equal(refusals(t, 'rate_limited'), before + 1);
    assert.deepEqual(
      captured.lines().filter((l) => l.reason === 'rate_limited').map((l) => l.peer),
      ['198.51.100.1'],
      'refused as the device behind the balancer, not the balancer',
    );
  });

  test('behind nginx (stream, proxy_protocol on): the device is admitted with its own address', { skip: skipNginx }, async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'fleet-nginx-stream-'));
    const balancer = await startNginx(nginx!, dir, () => '', (listen) => `server { listen 127.0.0.1:${listen}; proxy_pass 127.0.0.1:${port()}; proxy_protocol on; }`);
    try {
      const enrolled = await t.enroll('pp-nginx');
      // The device connects to nginx from 127.0.0.5; nginx reaches the broker from 127.0.0.1, the trusted proxy.
      const raw = await tcpWith(balancer.port, '', '127.0.0.5');
      const session = await mqttOver(deviceTls(raw, enrolled, t.rootPem).tls, 'pp-nginx');
      assert.equal(session.outcome, 'connected', await balancer.errorLog());
      const shown = await eventually(async () => ((await device('pp-nginx')).json.connected ? (await device('pp-nginx')).json : undefined), 'presence recorded');
      assert.equal(shown.peerAddress, '127.0.0.5');
      await session.client.endAsync();
    } finally {
      await balancer.stop();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
