import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import type { MqttClient } from 'mqtt';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { type EnrolledDevice, startTestFleet, type TestFleet } from './support/fleet.js';
import {
  closed,
  connectDevice,
  connectPacket,
  type DeviceTls,
  mqttPacket,
  nextMessage,
  PINGREQ,
  publishPacket,
  rawConnection,
  subscribePacket,
} from './support/mqtt.js';
import { run } from './support/openssl.js';
import { parseExposition, sampleValue } from './support/prometheus.js';

/*
 * What a device is told when it is refused, what the broker counts, and what it publishes (nothing)
 * for a session that broke the protocol or lost its access. Real clients: MQTT.js, mosquitto_pub and
 * mosquitto_sub, and raw MQTT bytes over mutual TLS for what no client library sends.
 */

let t: TestFleet;
/**
 * The fleet's clock. A test can make its next reading throw, to see a broker hook survive an
 * exception, or set it back, to be issued a certificate that expires moments from now.
 */
let failNextReading = false;
let offsetMs = 0;
const clock = () => {
  if (failNextReading) {
    failNextReading = false;
    throw new Error('clock failure injected by the test');
  }
  return new Date(Date.now() + offsetMs);
};
before(async () => {
  t = await startTestFleet({ clock, env: { FLEET_RENEWAL_OVERLAP: '2s', FLEET_CERT_LIFETIME_MIN: '1m' } });
});
after(() => t?.close());

const port = () => t.fleet.broker.port;
const tlsOf = (d: EnrolledDevice): DeviceTls => ({ ca: t.rootPem, cert: d.certificatePem, key: d.identity.keyPem });
const counted = (reason: string) => t.fleet.broker.refusals.get(reason as never) ?? 0;

async function metric(name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${t.fleet.metricsPort}/metrics`)).text();
  return sampleValue(parseExposition(text), name, labels) ?? 0;
}

/** mosquitto client options for an enrolled identity, connecting as `clientId`. */
async function mosquitto(d: EnrolledDevice, clientId: string): Promise<string[]> {
  return [
    ...['--cafile', await t.file('root.pem', t.rootPem)],
    ...['--cert', await t.file(`${clientId}.crt`, d.certificatePem), '--key', await t.file(`${clientId}.key`, d.identity.keyPem)],
    ...['-h', 'localhost', '-p', String(port()), '-i', clientId],
  ];
}

describe('CONNACK codes a device can act on', () => {
  test('mosquitto_pub is told "identifier rejected" (0x02) for a client id that is not its device id', async () => {
    const device = await t.enroll('code-1');
    const before = counted('client_id_mismatch');
    const pub = await run('mosquitto_pub', [...(await mosquitto(device, 'not-code-1')), '-t', 'devices/code-1/x', '-m', 'hi']);
    assert.notEqual(pub.code, 0);
    assert.match(pub.stderr, /Connection Refused: identifier rejected/);
    assert.equal(counted('client_id_mismatch'), before + 1);
  });

  test('mosquitto_pub is told "not authorised" (0x05) for a revoked device, MQTT.js for a suspended one', async () => {
    const revoked = await t.enroll('code-2');
    await t.api('POST', '/v1/devices/code-2/revoke', { token: t.adminToken, json: { reason: 'keyCompromise' } });
    const pub = await run('mosquitto_pub', [...(await mosquitto(revoked, 'code-2')), '-t', 'devices/code-2/x', '-m', 'hi']);
    assert.notEqual(pub.code, 0);
    assert.match(pub.stderr, /Connection Refused: not authori[sz]ed/);

    const suspended = await t.enroll('code-3');
    const res = await t.api('POST', '/v1/devices/code-3/suspend', { token: t.adminToken });
    assert.equal(res.status, 200, res.text);
    const attempt = await connectDevice(port(), 'code-3', tlsOf(suspended));
    assert.equal(attempt.connack, 5);
    attempt.client.end(true);
    assert.ok(counted('suspended') >= 1);
  });

  test('a certificate expired or not yet valid by the broker\'s clock is answered 0x05', async () => {
    // OpenSSL checks validity by the real clock at the handshake; admission checks it again by the fleet's.
    const device = await t.enroll('code-5');
    for (const [offset, reason] of [[100 * 86_400_000, 'expired'], [-86_400_000, 'not_yet_valid']] as const) {
      const before = counted(reason);
      offsetMs = offset;
      const attempt = await connectDevice(port(), 'code-5', tlsOf(device)).finally(() => (offsetMs = 0));
      assert.equal(attempt.connack, 5, reason);
      attempt.client.end(true);
      assert.equal(counted(reason), before + 1, reason);
    }
  });

  test('a keepalive of 0 (never checked) is answered 0x02: the same CONNECT will never be admitted', async () => {
    const device = await t.enroll('code-4');
    const raw = await rawConnection(port(), tlsOf(device));
    const before = counted('keepalive_too_long');
    raw.send(connectPacket({ clientId: 'code-4', keepalive: 0 }));
    assert.equal(await raw.connack(), 2);
    await raw.closed;
    assert.equal(counted('keepalive_too_long'), before + 1);
  });

  test('MQTT 5 and other protocol levels get 0x01 before anything is admitted, counted or announced', async () => {
    const device = await t.enroll('level-1');
    const reader = await t.enrollService('level-watcher', 'fleet-reader');
    const watcher = await connectDevice(port(), 'level-watcher', tlsOf(reader));
    const events: string[] = [];
    watcher.client.on('message', (topic) => topic.includes('level-1') && events.push(topic));
    await watcher.client.subscribeAsync('$fleet/#', { qos: 1 });
    const admitted = await metric('fleet_broker_sessions_admitted_total');
    const before = counted('unsupported_protocol_version');

    const v5 = await connectDevice(port(), 'level-1', tlsOf(device), { protocolVersion: 5 });
    assert.equal(v5.outcome, 'refused');
    assert.equal(v5.connack, 1, 'MQTT.js speaking MQTT 5 is answered 0x01, unacceptable protocol version');
    v5.client.end(true);
    for (const level of [5, 6, 0]) {
      const raw = await rawConnection(port(), tlsOf(device));
      raw.send(connectPacket({ clientId: 'level-1', level }));
      assert.equal(await raw.connack(), 1, `protocol level ${level} is answered 0x01`);
      await raw.closed;
    }
    const pub = await run('mosquitto_pub', [...(await mosquitto(device, 'level-1')), '-V', '5', '-t', 'devices/level-1/x', '-m', 'hi']);
    assert.notEqual(pub.code, 0, 'mosquitto_pub -V 5 is refused');
    assert.equal(counted('unsupported_protocol_version'), before + 5);
    assert.equal(await metric('fleet_broker_sessions_admitted_total'), admitted, 'no session was admitted');

    // The first lifecycle event of the device is that of its first MQTT 3.1.1 session.
    const connected = nextMessage(watcher.client, '$fleet/lifecycle/level-1/connected', 5000);
    const ok = await connectDevice(port(), 'level-1', tlsOf(device));
    assert.equal(ok.outcome, 'connected');
    assert.ok(await connected);
    assert.deepEqual(events.filter((topic) => topic.startsWith('$fleet/lifecycle/')), ['$fleet/lifecycle/level-1/connected']);
    await ok.client.endAsync();
    await watcher.client.endAsync();
  });
});

describe('protocol errors', () => {
  test('garbage, a truncated CONNECT and a packet before CONNECT are closed without CONNACK and counted as protocol_error', async () => {
    const device = await t.enroll('proto-1');
    const truncated = mqttPacket(0x10, Buffer.concat([Buffer.from([0, 4]), Buffer.from('MQTT'), Buffer.from([4, 2, 0, 60, 0, 50]), Buffer.from('pro')]));
    const cases: [string, Buffer][] = [
      ['an HTTP request', Buffer.from('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n')],
      ['a CONNECT whose client id runs past its end', truncated],
      ['a PUBLISH before CONNECT', publishPacket('devices/proto-1/early', 'x')],
      ['a CONNECT whose Will topic holds U+0000', connectPacket({ clientId: 'proto-1', will: { topic: 'devices/proto-1/\u0000', payload: 'x' } })],
    ];
    for (const [what, bytes] of cases) {
      const before = counted('protocol_error');
      const raw = await rawConnection(port(), tlsOf(device));
      raw.send(bytes);
      assert.equal(await raw.connack(), undefined, `${what}: no CONNACK`);
      await raw.closed;
      assert.equal(counted('protocol_error'), before + 1, `${what}: counted as protocol_error`);
    }
  });

  test('a second CONNECT closes the session and is counted as protocol_error', async () => {
    const device = await t.enroll('proto-2');
    const raw = await rawConnection(port(), tlsOf(device));
    raw.send(connectPacket({ clientId: 'proto-2' }));
    assert.equal(await raw.connack(), 0);
    const before = counted('protocol_error');
    raw.send(connectPacket({ clientId: 'proto-2' }));
    await raw.closed;
    assert.equal(counted('protocol_error'), before + 1);
  });

  test('an exception inside admission is logged and answered 0x03, and the broker keeps serving', async () => {
    const device = await t.enroll('fault-1');
    const raw = await rawConnection(port(), tlsOf(device));
    const before = counted('internal_error');
    failNextReading = true;
    raw.send(connectPacket({ clientId: 'fault-1' }));
    assert.equal(await raw.connack(), 3, 'server unavailable: retry later');
    await raw.closed;
    assert.equal(failNextReading, false, 'the admission read the clock');
    assert.equal(counted('internal_error'), before + 1);
    const again = await connectDevice(port(), 'fault-1', tlsOf(device));
    assert.equal(again.outcome, 'connected');
    await again.client.endAsync();
  });

  test('a service whose role the policy lacks gets no topics, even a role named like an Object property', async () => {
    const service = await t.enrollService('role-proto', 'constructor');
    const session = await connectDevice(port(), 'role-proto', tlsOf(service));
    assert.equal(session.outcome, 'connected');
    const refused = await session.client.subscribeAsync('devices/#').then(() => undefined, (error) => error);
    assert.deepEqual(refused?.packet?.granted, [128]);
    await session.client.endAsync();
  });
});

/** Collects every message `client` receives from now on. */
function collect(client: MqttClient) {
  const seen: { topic: string; payload: string; retain: boolean }[] = [];
  client.on('message', (topic, payload, packet) => seen.push({ topic, payload: payload.toString(), retain: packet.retain }));
  return seen;
}

describe('topics that are not valid MQTT text', () => {
  test('a PUBLISH to a topic with U+0000, a control character or invalid UTF-8 closes the session and reaches no subscriber', async () => {
    const device = await t.enroll('topic-1');
    const reader = await t.enrollService('topic-reader', 'fleet-reader');
    const own = await connectDevice(port(), 'topic-1', tlsOf(device));
    await own.client.publishAsync('devices/topic-1/hello', 'ready', { qos: 1, retain: true });

    // libmosquitto drops its connection on such a topic. mosquitto_sub prints the retained hello once
    // subscribed, then must see the marker next, not the hello again after being knocked off.
    const sub = spawn('mosquitto_sub', [...(await mosquitto(reader, 'topic-reader')), '-t', 'devices/topic-1/#', '-v', '-C', '2']);
    let printed = '';
    sub.stdout.on('data', (chunk) => (printed += chunk));
    const exited = once(sub, 'exit');
    while (!printed.includes('\n')) await once(sub.stdout, 'data');

    const invalid: [string, string | Buffer][] = [
      ['U+0000', 'devices/topic-1/a\u0000b'],
      ['a control character', 'devices/topic-1/a\u0001b'],
      ['a byte that is not UTF-8', Buffer.concat([Buffer.from('devices/topic-1/'), Buffer.from([0xff])])],
      ['an overlong encoding of /', Buffer.concat([Buffer.from('devices/topic-1/a'), Buffer.from([0xc0, 0xaf]), Buffer.from('b')])],
    ];
    for (const [what, topic] of invalid) {
      const denied = await metric('fleet_broker_denials_total', { action: 'publish' });
      const raw = await rawConnection(port(), tlsOf(device));
      raw.send(connectPacket({ clientId: 'topic-1' }));
      assert.equal(await raw.connack(), 0);
      raw.send(Buffer.concat([publishPacket(topic, 'poison'), PINGREQ]));
      assert.equal(await raw.next(13), undefined, `${what}: the session is closed, not answered`);
      await raw.closed;
      assert.equal(await metric('fleet_broker_denials_total', { action: 'publish' }), denied + 1, `${what}: counted as a denied publish`);
    }
    const marker = await connectDevice(port(), 'topic-1', tlsOf(device));
    await marker.client.publishAsync('devices/topic-1/marker', 'done', { qos: 1 });
    await exited;
    assert.deepEqual(printed.trim().split('\n'), ['devices/topic-1/hello ready', 'devices/topic-1/marker done']);
    await marker.client.publishAsync('devices/topic-1/hello', '', { qos: 1, retain: true });
    await marker.client.endAsync();
    own.client.end(true);
  });

  test('a SUBSCRIBE filter with U+0000 or invalid UTF-8 gets SUBACK 0x80, and the session continues', async () => {
    const device = await t.enroll('topic-2');
    const raw = await rawConnection(port(), tlsOf(device));
    raw.send(connectPacket({ clientId: 'topic-2' }));
    assert.equal(await raw.connack(), 0);
    const filters: [string, string | Buffer, number][] = [
      ['U+0000', 'devices/topic-2/\u0000', 0x80],
      ['invalid UTF-8', Buffer.concat([Buffer.from('devices/topic-2/'), Buffer.from([0xfe, 0xff])]), 0x80],
      ['its own tree', 'devices/topic-2/#', 0x00],
    ];
    for (const [index, [what, filter, code]] of filters.entries()) {
      raw.send(subscribePacket(index + 1, filter));
      const suback = await raw.next(9);
      assert.ok(suback, `${what}: a SUBACK, the session is still open`);
      assert.equal(suback.readUInt16BE(2), index + 1);
      assert.equal(suback.at(-1), code, `${what}: granted ${code}`);
    }
    raw.socket.end();
    await raw.closed;
  });
});

describe('no Will once access is withdrawn', () => {
  let watcher: MqttClient;
  let commander: MqttClient;
  before(async () => {
    watcher = (await connectDevice(port(), 'will-watcher', tlsOf(await t.enrollService('will-watcher', 'fleet-reader')))).client;
    commander = (await connectDevice(port(), 'will-commander', tlsOf(await t.enrollService('will-commander', 'fleet-commander')))).client;
  });
  after(async () => {
    await watcher?.endAsync();
    await commander?.endAsync();
  });

  /** Connects `id` with a retained Will on devices/<id>/status, watched from now on. */
  async function withWill(id: string, device: EnrolledDevice) {
    await watcher.subscribeAsync(`devices/${id}/#`, { qos: 1 });
    const seen = collect(watcher);
    const will = { topic: `devices/${id}/status`, payload: Buffer.from('gone'), qos: 1 as const, retain: true };
    const session = await connectDevice(port(), id, tlsOf(device), { will });
    assert.equal(session.outcome, 'connected');
    return { session, seen };
  }

  /** What the watcher saw before a marker sent after the session ended, and whether a Will was left retained. */
  async function afterwards(id: string, seen: ReturnType<typeof collect>) {
    const marker = nextMessage(watcher, `devices/${id}/commands/marker`, 10_000);
    await commander.publishAsync(`devices/${id}/commands/marker`, 'after', { qos: 1 });
    assert.ok(await marker, 'the marker arrived');
    const live = seen.filter((m) => !m.topic.endsWith('/marker'));
    const late = collect(watcher);
    await watcher.unsubscribeAsync(`devices/${id}/#`);
    await watcher.subscribeAsync([`devices/${id}/status`, `devices/${id}/commands/#`], { qos: 1 });
    const second = nextMessage(watcher, `devices/${id}/commands/marker`, 10_000);
    await commander.publishAsync(`devices/${id}/commands/marker`, 'again', { qos: 1 });
    assert.ok(await second);
    return { live, retained: late.filter((m) => m.retain) };
  }

  test('a device that drops its connection has its Will published (so the others are not vacuous)', async () => {
    const device = await t.enroll('will-0');
    const { session, seen } = await withWill('will-0', device);
    (session.client.stream as unknown as { destroy(): void }).destroy();
    const { live, retained } = await afterwards('will-0', seen);
    assert.deepEqual(live.map((m) => [m.topic, m.payload]), [['devices/will-0/status', 'gone']]);
    assert.deepEqual(retained.map((m) => m.payload), ['gone']);
    session.client.end(true);
  });

  test('revoked, suspended: the broker closes the session and publishes no Will, live or retained', async () => {
    for (const [id, action] of [['will-1', 'revoke'], ['will-2', 'suspend']] as const) {
      const device = await t.enroll(id);
      const { session, seen } = await withWill(id, device);
      const ended = closed(session.client);
      const res = await t.api('POST', `/v1/devices/${id}/${action}`, { token: t.adminToken, json: action === 'revoke' ? { reason: 'keyCompromise' } : undefined });
      assert.equal(res.status, 200, res.text);
      await ended;
      session.client.end(true);
      const { live, retained } = await afterwards(id, seen);
      assert.deepEqual(live, [], `${action}: no Will published`);
      assert.deepEqual(retained, [], `${action}: no Will retained`);
    }
  });

  test('expiry closes the session and publishes no Will', async () => {
    // Issued 55 s ago (by the fleet's clock) for one minute: it expires about 5 s from now.
    const token = await t.register('will-4');
    const identity = await createDeviceIdentity('will-4');
    offsetMs = -55_000;
    const res = await t.api('POST', '/v1/enrollments', { json: { token, csr: identity.csrPem, lifetime: '1m' } });
    offsetMs = 0;
    assert.equal(res.status, 201, res.text);
    const { session, seen } = await withWill('will-4', { identity, certificatePem: res.json.certificate, chainPem: res.json.chain, serial: res.json.serial });
    // Nothing else ends it: no revocation, no renewal.
    await closed(session.client);
    session.client.end(true);
    const { live, retained } = await afterwards('will-4', seen);
    assert.deepEqual(live, []);
    assert.deepEqual(retained, []);
  });

  test('the end of a renewal overlap closes the old session and publishes no Will', async () => {
    const device = await t.enroll('will-3');
    const { session, seen } = await withWill('will-3', device);
    const ended = closed(session.client);
    const fresh = await createDeviceIdentity('will-3');
    const renewed = await t.api('POST', '/v1/renewals', { json: { csr: fresh.csrPem }, tls: { cert: device.certificatePem, key: device.identity.keyPem } });
    assert.equal(renewed.status, 201, renewed.text);
    await ended;
    session.client.end(true);
    const { live, retained } = await afterwards('will-3', seen);
    assert.deepEqual(live, []);
    assert.deepEqual(retained, []);
  });
});
