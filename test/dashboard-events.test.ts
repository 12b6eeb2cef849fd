import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { deviceEventRecorder } from '../broker/events.js';
import { createBrokerMetrics } from '../broker/metrics.js';
import { silentLogger } from '../core/log.js';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { x509 } from '../core/pki/x509.js';
import { createOperatorToken, type DeviceEvent, deviceEventsAfter, latestDeviceEventId, recordDeviceEvents } from '../core/registry/index.js';
import { type EnrolledDevice, startTestFleet, type TestFleet } from './support/fleet.js';
import { closed, connectDevice, type DeviceTls } from './support/mqtt.js';
import { sampleValue, parseExposition } from './support/prometheus.js';
import { curlStream, type SseMessage, type SseStream } from './support/sse.js';
import { manualTime } from './support/time.js';
import { eventually } from './support/wait.js';

/*
 * Device events end to end: the broker records connects, disconnects and refusals in batches, the
 * registry records enrollments, revocations and suspensions with the change itself, the API pages a
 * device's events, and GET /v1/events streams them live (read with curl -N) and resumes after
 * Last-Event-ID. Time is the test's: the broker's batches and the retention run when it moves.
 */

const MAX_STREAMS = 3;
const time = manualTime();
let t: TestFleet;
let viewer: string;
let caFile: string;
const streams: SseStream[] = [];

before(async () => {
  t = await startTestFleet({ time, env: { FLEET_EVENT_STREAMS_MAX: String(MAX_STREAMS), FLEET_EVENT_RETENTION: '30d' } });
  viewer = (await createOperatorToken(t.fleet.db.pool, { name: 'viewer', role: 'viewer', actor: 'test', now: new Date() })).token;
  caFile = await t.file('root.pem', t.rootPem);
});
after(async () => {
  for (const s of streams) await s.close();
  await t?.close();
});

const tlsOf = (d: EnrolledDevice): DeviceTls => ({ ca: t.rootPem, cert: d.certificatePem, key: d.identity.keyPem });

/** A stream read with curl; `token` null sends none. */
function stream(query = '', headers: Record<string, string> = {}, token: string | null = viewer): SseStream {
  const s = curlStream(`${t.apiUrl}/v1/events${query}`, { caFile, headers: token ? { authorization: `Bearer ${token}`, ...headers } : headers });
  streams.push(s);
  return s;
}

/** Stored events matching `match`, once the broker's pending batch has been written (time moves a second at a time). */
async function stored(match: (e: DeviceEvent) => boolean, what: string): Promise<DeviceEvent[]> {
  let found: DeviceEvent[] = [];
  await eventually(async () => {
    time.advance(1000);
    found = (await deviceEventsAfter(t.fleet.db.pool, 0, 100_000)).filter(match);
    return found.length > 0;
  }, what);
  return found;
}

/** Waits for a streamed message, moving time a second at a time so the broker's batches are written. */
async function arrives(s: SseStream, match: (m: SseMessage) => boolean, what: string): Promise<SseMessage> {
  let found: SseMessage | undefined;
  await eventually(() => {
    time.advance(1000);
    return (found = s.messages.find(match)) !== undefined;
  }, what);
  return found!;
}

const isEvent = (kind: string, deviceId: string | null, reason?: string) => (m: SseMessage) =>
  m.event === kind && m.data.deviceId === deviceId && (reason === undefined || m.data.reason === reason);

describe('the broker records sessions', () => {
  test('a device that connects is recorded with its serial and address, and presence names its serial', async () => {
    const live = stream();
    assert.equal((await live.head()).status, 200);
    const device = await t.enroll('ev-conn');
    const session = await connectDevice(t.fleet.broker.port, 'ev-conn', tlsOf(device));
    assert.equal(session.outcome, 'connected');

    const [connected] = await stored((e) => e.kind === 'connected' && e.deviceId === 'ev-conn', 'the connect was recorded');
    assert.equal(connected!.serial, device.serial);
    assert.equal(connected!.address, '127.0.0.1');

    const message = await arrives(live, isEvent('connected', 'ev-conn'), 'the stream delivered the connect');
    assert.equal(message.id, String(connected!.id), 'the message id is the event id');
    assert.equal(message.data.serial, device.serial);
    assert.equal(message.data.address, '127.0.0.1');

    await eventually(async () => {
      const { rows } = await t.fleet.db.pool.query('SELECT connected_serial FROM devices WHERE id = $1', ['ev-conn']);
      return rows[0].connected_serial === device.serial;
    }, 'presence recorded the serial of the live session');

    await session.client.endAsync();
    const [gone] = await stored((e) => e.kind === 'disconnected' && e.deviceId === 'ev-conn', 'the disconnect was recorded');
    assert.equal(gone!.reason, 'client_disconnect', 'a DISCONNECT packet is the client leaving');
    await eventually(async () => {
      const { rows } = await t.fleet.db.pool.query('SELECT connected_serial FROM devices WHERE id = $1', ['ev-conn']);
      return rows[0].connected_serial === null;
    }, 'presence cleared the serial when the device went offline');
    await live.close();
  });

  test('a second connection with the same client id takes over: the first is recorded as disconnected by takeover', async () => {
    const device = await t.enroll('ev-takeover');
    const first = await connectDevice(t.fleet.broker.port, 'ev-takeover', tlsOf(device));
    const second = await connectDevice(t.fleet.broker.port, 'ev-takeover', tlsOf(device));
    assert.equal(second.outcome, 'connected');
    await closed(first.client);
    const [gone] = await stored((e) => e.kind === 'disconnected' && e.deviceId === 'ev-takeover', 'the takeover was recorded');
    assert.equal(gone!.reason, 'takeover');
    await second.client.endAsync();
  });

  test('a device revoked through the API: revoked and disconnected (revoked) stream live, and its next connect is refused', async () => {
    const live = stream();
    const device = await t.enroll('ev-revoke');
    const session = await connectDevice(t.fleet.broker.port, 'ev-revoke', tlsOf(device));
    assert.equal(session.outcome, 'connected');
    await arrives(live, isEvent('connected', 'ev-revoke'), 'the connect streamed');

    const res = await t.api('POST', '/v1/devices/ev-revoke/revoke', { token: t.adminToken, json: { reason: 'keyCompromise' } });
    assert.equal(res.status, 200);
    await closed(session.client);

    const revoked = await live.next(isEvent('revoked', 'ev-revoke'), 'the revocation streamed');
    assert.equal(revoked.data.reason, 'keyCompromise');
    assert.match(revoked.data.details.actor, /^operator:/, 'who revoked it');
    const disconnected = await arrives(live, isEvent('disconnected', 'ev-revoke'), 'the disconnect streamed');
    assert.equal(disconnected.data.reason, 'revoked');
    assert.equal(disconnected.data.serial, device.serial);
    assert.ok(Number(disconnected.id) > Number(revoked.id), 'the cut follows the revocation');

    const again = await connectDevice(t.fleet.broker.port, 'ev-revoke', tlsOf(device));
    assert.equal(again.outcome, 'refused');
    const refused = await arrives(live, isEvent('refused', 'ev-revoke'), 'the refusal streamed');
    assert.equal(refused.data.reason, 'revoked');
    assert.equal(refused.data.serial, device.serial);
    assert.equal(refused.data.address, '127.0.0.1');
    await live.close();
  });

  test('an unknown certificate is refused: the event has the reason, the address and the client id it tried', async () => {
    const ghost = await createDeviceIdentity('ev-ghost');
    const cert = await t.fleet.ca.sign({
      subject: 'CN=ev-ghost',
      publicKey: ghost.csr.publicKey,
      notBefore: new Date(Date.now() - 60_000),
      notAfter: new Date(Date.now() + 3_600_000),
      extensions: [new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth])],
    });
    const attempt = await connectDevice(t.fleet.broker.port, 'ev-ghost', { ca: t.rootPem, cert: cert.toString('pem'), key: ghost.keyPem });
    assert.equal(attempt.outcome, 'refused');
    const [refused] = await stored((e) => e.kind === 'refused' && e.details.clientId === 'ev-ghost', 'the refusal was recorded');
    assert.equal(refused!.reason, 'unknown_certificate');
    assert.equal(refused!.address, '127.0.0.1');
    assert.equal(refused!.deviceId, null, 'no registered device is named');
  });

  test('past its capacity the pending buffer drops events and counts them', async () => {
    const metrics = createBrokerMetrics();
    const own = manualTime();
    const recorder = deviceEventRecorder({ pool: t.fleet.db.pool, scheduler: own.scheduler, clock: own.clock, metrics, log: silentLogger(), capacity: 3 });
    for (let i = 0; i < 5; i++) recorder.connected('ev-buffer', `serial-${i}`, '::ffff:192.0.2.1');
    const dropped = sampleValue(parseExposition(await metrics.registry.metrics()), 'fleet_broker_events_dropped_total', {});
    assert.equal(dropped, 2);
    own.advance(1000);
    await recorder.close();
    const written = (await deviceEventsAfter(t.fleet.db.pool, 0, 100_000)).filter((e) => e.deviceId === 'ev-buffer');
    assert.deepEqual(written.map((e) => e.serial), ['serial-0', 'serial-1', 'serial-2'], 'the first three, in order');
    assert.equal(written[0]!.address, '192.0.2.1', 'an IPv4 peer of a dual-stack listener is recorded by its IPv4 address');
  });
});

describe('GET /v1/events', () => {
  test('resuming with Last-Event-ID delivers exactly the events missed, once each, then live ones', async () => {
    await t.enroll('ev-resume');
    const first = stream();
    await first.head();
    await t.api('POST', '/v1/devices/ev-resume/suspend', { token: t.adminToken });
    const seen = await first.next(isEvent('suspended', 'ev-resume'), 'the suspension streamed');
    await first.close();

    // Missed while disconnected: a resumption, a suspension and a resumption.
    await t.api('POST', '/v1/devices/ev-resume/resume', { token: t.adminToken });
    await t.api('POST', '/v1/devices/ev-resume/suspend', { token: t.adminToken });
    await t.api('POST', '/v1/devices/ev-resume/resume', { token: t.adminToken });
    const missed = (await deviceEventsAfter(t.fleet.db.pool, Number(seen.id), 1000)).map((e) => String(e.id));
    assert.ok(missed.length >= 3);

    for (const resume of [{ headers: { 'last-event-id': seen.id! } }, { query: `?after=${seen.id}` }]) {
      const again = stream(resume.query ?? '', resume.headers ?? {});
      await eventually(() => again.messages.length >= missed.length, 'the missed events were delivered');
      assert.deepEqual(again.messages.slice(0, missed.length).map((m) => m.id), missed, 'exactly the missed events, in order');
      assert.deepEqual(again.messages.slice(0, 3).map((m) => m.event), ['resumed', 'suspended', 'resumed']);
      await t.api('POST', '/v1/devices/ev-resume/suspend', { token: t.adminToken });
      await again.next((m) => Number(m.id) > Number(missed.at(-1)) && m.event === 'suspended', 'a live event after the replay');
      const ids = again.messages.map((m) => m.id);
      assert.equal(new Set(ids).size, ids.length, 'no event twice');
      await t.api('POST', '/v1/devices/ev-resume/resume', { token: t.adminToken });
      missed.push(...(await deviceEventsAfter(t.fleet.db.pool, Number(missed.at(-1)), 1000)).map((e) => String(e.id)));
      await again.close();
    }
  });

  test('an event that commits after a later one is still delivered: ids become visible in commit order', async () => {
    const live = stream('?device=ev-order');
    await live.head();
    const slow = await t.fleet.db.pool.connect();
    try {
      await slow.query('BEGIN');
      await recordDeviceEvents(slow, [{ at: time.clock(), kind: 'refused', deviceId: 'ev-order', reason: 'first' }]);
      let written = false;
      const second = recordDeviceEvents(t.fleet.db.pool, [{ at: time.clock(), kind: 'refused', deviceId: 'ev-order', reason: 'second' }]).then(
        () => void (written = true),
      );
      // Either the second write waits for the first transaction (the order lock), or it went through and was streamed.
      const waiting = async () =>
        Number((await t.fleet.db.pool.query(`SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`)).rows[0].count) > 0;
      await eventually(async () => (written && live.messages.some((m) => m.data.reason === 'second')) || (await waiting()), 'the second write waited or was streamed');
      await slow.query('COMMIT');
      await second;
    } finally {
      slow.release();
    }
    await arrives(live, (m) => m.data.reason === 'first', 'the first event was streamed too');
    await arrives(live, (m) => m.data.reason === 'second', 'the second event was streamed');
    assert.deepEqual(live.messages.map((m) => m.data.reason), ['first', 'second'], 'each once, in id order');
    await live.close();
  });

  test('?device and ?kinds deliver only what they name', async () => {
    await t.enroll('ev-mine');
    await t.enroll('ev-other');
    const mine = stream('?device=ev-mine');
    const suspensions = stream('?kinds=suspended');
    await Promise.all([mine.head(), suspensions.head()]);
    for (const id of ['ev-other', 'ev-mine']) {
      await t.api('POST', `/v1/devices/${id}/suspend`, { token: t.adminToken });
      await t.api('POST', `/v1/devices/${id}/resume`, { token: t.adminToken });
    }
    await mine.next(isEvent('resumed', 'ev-mine'), "ev-mine's resumption streamed");
    await suspensions.next(isEvent('suspended', 'ev-mine'), "ev-mine's suspension streamed");
    assert.deepEqual(mine.messages.map((m) => m.data.deviceId), ['ev-mine', 'ev-mine']);
    assert.deepEqual(mine.messages.map((m) => m.event), ['suspended', 'resumed']);
    assert.deepEqual(suspensions.messages.map((m) => [m.event, m.data.deviceId]), [['suspended', 'ev-other'], ['suspended', 'ev-mine']]);
    await Promise.all([mine.close(), suspensions.close()]);
  });

  test('heartbeats are comment lines, on the fleet scheduler', async () => {
    const live = stream();
    await live.head();
    await eventually(() => {
      time.advance(15_000);
      return live.comments.includes('heartbeat');
    }, 'a heartbeat comment arrived');
    assert.equal(live.messages.filter((m) => m.event === undefined).length, 0, 'heartbeats are not messages');
    await live.close();
  });

  test('needs an operator token; a viewer may read; bad ids, kinds and cursors are 400 problems', async () => {
    // Read as a stream, so that a stream served by mistake fails here rather than hanging the test.
    const anonymous = await stream('', {}, null).head();
    assert.equal(anonymous.status, 401);
    assert.equal(anonymous.headers['content-type'], 'application/problem+json');
    assert.equal((await t.api('GET', '/v1/devices/ev-conn/events')).status, 401);
    const forged = stream('', {}, 'fleet_op_not-a-real-token');
    assert.equal((await forged.head()).status, 401);

    const head = await stream().head();
    assert.equal(head.status, 200);
    assert.match(head.headers['content-type']!, /^text\/event-stream/);
    assert.equal((await t.api('GET', '/v1/devices/ev-conn/events', { token: viewer })).status, 200);

    for (const [path, headers] of [
      ['/v1/events?kinds=connected,exploded', {}],
      ['/v1/events?after=-1', {}],
      ['/v1/events', { 'last-event-id': 'abc' }],
      ['/v1/events?device=../etc', {}],
      ['/v1/devices/ev-conn/events?cursor=bm90LWEtY3Vyc29y', {}],
      ['/v1/devices/ev-conn/events?limit=201', {}],
    ] as const) {
      const res = await t.api('GET', path, { token: viewer, headers });
      assert.equal(res.status, 400, `${path} ${JSON.stringify(headers)}`);
      assert.equal(res.headers['content-type'], 'application/problem+json');
      assert.equal(res.json.code, 'validation_failed');
    }
    const unknown = await t.api('GET', '/v1/devices/ev-nobody/events', { token: viewer });
    assert.equal(unknown.status, 404);
    assert.equal(unknown.json.code, 'device_not_found');
    for (const s of streams) await s.close();
  });

  test(`at most ${MAX_STREAMS} streams at once: the next is a 503 problem until one closes`, async () => {
    const open = Array.from({ length: MAX_STREAMS }, () => stream());
    for (const s of open) assert.equal((await s.head()).status, 200);
    const refused = await stream().head();
    assert.equal(refused.status, 503);
    assert.equal(refused.headers['content-type'], 'application/problem+json');
    assert.ok(refused.headers['retry-after']);
    await open[0]!.close();
    await eventually(async () => {
      const s = stream();
      const ok = (await s.head()).status === 200;
      if (!ok) await s.close();
      return ok;
    }, 'a stream was served again once one closed');
    for (const s of streams) await s.close();
  });

  test('is in the OpenAPI document as text/event-stream', async () => {
    const doc = (await t.api('GET', '/openapi.json')).json;
    assert.ok(doc.paths['/v1/events'].get.responses['200'].content['text/event-stream']);
    assert.ok(doc.paths['/v1/devices/{id}/events'].get.responses['200'].content['application/json']);
  });
});

describe("a device's events", () => {
  test('page newest first with an opaque cursor, each event once', async () => {
    await t.register('ev-pages');
    const at = time.clock();
    await recordDeviceEvents(t.fleet.db.pool, Array.from({ length: 7 }, (_, i) => ({ at, kind: 'refused' as const, deviceId: 'ev-pages', reason: `r${i}` })));
    const reasons: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const res = await t.api('GET', `/v1/devices/ev-pages/events?limit=3${cursor ? `&cursor=${cursor}` : ''}`, { token: viewer });
      assert.equal(res.status, 200);
      reasons.push(...res.json.events.map((e: { reason: string }) => e.reason));
      cursor = res.json.nextCursor;
      pages++;
    } while (cursor);
    assert.equal(pages, 3);
    assert.deepEqual(reasons, ['r6', 'r5', 'r4', 'r3', 'r2', 'r1', 'r0']);
  });
});

describe('shutdown', () => {
  test('an open stream ends cleanly when the fleet stops, and live sessions are recorded as disconnected by shutdown', async () => {
    const device = await t.enroll('ev-shutdown');
    const session = await connectDevice(t.fleet.broker.port, 'ev-shutdown', tlsOf(device));
    assert.equal(session.outcome, 'connected');
    const live = stream();
    await live.head();
    const before = await latestDeviceEventId(t.fleet.db.pool);
    await t.restart();
    assert.equal(await live.exited, 0, 'curl saw the stream end, not break');
    const after = await deviceEventsAfter(t.fleet.db.pool, before, 1000);
    const gone = after.find((e) => e.kind === 'disconnected' && e.deviceId === 'ev-shutdown');
    assert.equal(gone?.reason, 'shutdown');
    session.client.end(true);
  });
});

describe('retention', () => {
  test('events older than FLEET_EVENT_RETENTION are deleted when the hourly run comes, newer ones kept', async () => {
    const now = time.now();
    await recordDeviceEvents(t.fleet.db.pool, [
      { at: new Date(now - 31 * 86_400_000), kind: 'refused', deviceId: 'ev-old', reason: 'expired' },
      { at: new Date(now - 30 * 86_400_000 - 60_000), kind: 'refused', deviceId: 'ev-old', reason: 'expired' },
      { at: new Date(now - 29 * 86_400_000), kind: 'refused', deviceId: 'ev-kept', reason: 'expired' },
    ]);
    const count = async (deviceId: string) =>
      Number((await t.fleet.db.pool.query('SELECT count(*) FROM device_events WHERE device_id = $1', [deviceId])).rows[0].count);
    assert.equal(await count('ev-old'), 2);
    time.advance(3_600_000);
    await eventually(async () => (await count('ev-old')) === 0, 'the old events were deleted');
    assert.equal(await count('ev-kept'), 1);
  });
});
