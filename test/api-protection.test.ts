import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { createOperatorToken } from '../core/registry/index.js';
import { startTestFleet, type TestFleet } from './support/fleet.js';
import { scrapedValue } from './support/prometheus.js';
import { chunk, chunkedHead, rawConnect } from './support/raw-tls.js';

/**
 * The API spends nothing on a client before it has proved who it is: credentials in headers are
 * checked before a body byte is read, tokens are looked up before CSRs are verified, and clients
 * that hold connections without sending are dropped. Raw TLS sockets play the attacker.
 *
 * Tests that wait for the server to answer or close have a timeout of their own: a hundred times
 * what the behaviour needs, and far below what the server did without it (it waited for the body,
 * or Node's defaults of 60 s for headers and 300 s for a request), so they fail one by one.
 */

/** A CSR whose signature no longer verifies: its last byte (part of the ECDSA signature) flipped. */
async function brokenCsr(deviceId: string): Promise<string> {
  const der = Buffer.from((await createDeviceIdentity(deviceId)).csr.rawData);
  der[der.length - 1] = der[der.length - 1]! ^ 0x01;
  return der.toString('base64');
}

const randomToken = () => `fleet_enroll_${randomBytes(32).toString('base64url')}`;
const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

const metric = (t: TestFleet, name: string, labels: Record<string, string>) => scrapedValue(t.fleet.metricsPort, name, labels);

describe('authenticate before reading', () => {
  let t: TestFleet;
  before(async () => {
    t = await startTestFleet();
  });
  after(() => t?.close());

  const statusLine = /^HTTP\/1\.1 (\d{3})/;

  for (const [name, head] of [
    ['no token, bulk registration', () => chunkedHead('POST', '/v1/devices/bulk', { 'Content-Type': 'application/json' })],
    ['an unknown token, device registration', () => chunkedHead('POST', '/v1/devices', { 'Content-Type': 'application/json', Authorization: 'Bearer fleet_op_nope' })],
    ['unknown EST credentials', () => chunkedHead('POST', '/.well-known/est/simpleenroll', { 'Content-Type': 'application/pkcs10', Authorization: basic('sensor-x', randomToken()) })],
    ['no client certificate, renewal', () => chunkedHead('POST', '/v1/renewals', { 'Content-Type': 'application/json' })],
  ] as const) {
    test(`${name}: the 401 arrives though the body never does, and the connection closes`, { timeout: 20_000 }, async () => {
      const raw = rawConnect(t.fleet.api.port, t.rootPem);
      // A large chunked body announced, a first piece of it sent, then nothing more, ever.
      raw.socket.write(head());
      raw.socket.write(Buffer.from(`800000\r\n${'A'.repeat(4096)}`));
      const text = await raw.until(/\r\n\r\n\{.*\}$/s);
      assert.equal(statusLine.exec(text)?.[1], '401', text);
      assert.match(text, /content-type: application\/problem\+json/i);
      assert.match(text, /connection: close/i, 'the rest of the body will not be read');
      await raw.closed;
    });
  }

  test('a role without the permission is refused before the body too (403)', { timeout: 20_000 }, async () => {
    const viewer = await createOperatorToken(t.fleet.db.pool, { name: 'v', role: 'viewer', actor: 'test', now: new Date() });
    const raw = rawConnect(t.fleet.api.port, t.rootPem);
    raw.socket.write(chunkedHead('POST', '/v1/devices/bulk', { 'Content-Type': 'application/json', Authorization: `Bearer ${viewer.token}` }));
    raw.socket.write(Buffer.from('800000\r\n{"devices":['));
    const text = await raw.until(/\r\n\r\n\{.*\}$/s);
    assert.equal(statusLine.exec(text)?.[1], '403', text);
    await raw.closed;
  });

  test('with a valid token, a body over the limit is refused as it streams in (413), without its end', { timeout: 20_000 }, async () => {
    const raw = rawConnect(t.fleet.api.port, t.rootPem);
    raw.socket.write(chunkedHead('POST', '/v1/devices', { 'Content-Type': 'application/json', Authorization: `Bearer ${t.adminToken}` }));
    for (let i = 0; i < 20; i++) raw.socket.write(chunk(Buffer.alloc(4096, 0x20)));
    const text = await raw.until(/\r\n\r\n\{.*\}$/s);
    assert.equal(statusLine.exec(text)?.[1], '413', text);
    assert.match(text, /body_too_large/);
    await raw.closed;
  });

  test('a GET that carries a body is answered, its body unread', async () => {
    const res = await t.api('GET', '/v1/devices/nobody', { token: t.adminToken, body: '{}', headers: { 'content-type': 'application/json', 'content-length': '2' } });
    assert.equal(res.status, 404, res.text);
    assert.equal(res.json.code, 'device_not_found');
  });

  test('an enrollment looks its token up before it verifies the CSR', async () => {
    const res = await t.api('POST', '/v1/enrollments', { json: { token: randomToken(), csr: await brokenCsr('cheap-1') } });
    assert.equal(res.status, 401, res.text);
    assert.equal(res.json.code, 'token_unknown');

    const est = await t.api('POST', '/.well-known/est/simpleenroll', {
      body: 'not a CSR at all',
      headers: { 'content-type': 'application/pkcs10', authorization: basic('cheap-2', randomToken()) },
    });
    assert.equal(est.status, 401, est.text);
    assert.equal(est.json.code, 'token_unknown');
  });

  test('a batch of unknown tokens with CSRs is refused token by token, without verifying a CSR; known tokens still enroll', async () => {
    const broken = await brokenCsr('batch-cheap');
    const enrollments = Array.from({ length: 200 }, () => ({ token: randomToken(), csr: broken }));
    const token = await t.register('batch-cheap-ok');
    enrollments.push({ token, csr: (await createDeviceIdentity('batch-cheap-ok')).csrPem });
    const res = await t.api('POST', '/v1/enrollments/batch', { json: { enrollments } });
    assert.equal(res.status, 200, res.text.slice(0, 500));
    const codes = new Set(res.json.results.slice(0, 200).map((r: { problem: { code: string } }) => r.problem.code));
    assert.deepEqual([...codes], ['token_unknown'], 'no CSR of an unknown token was looked at');
    assert.equal(res.json.results[200].status, 201);
    assert.equal(res.json.issued, 1);
    assert.ok((await metric(t, 'fleet_api_auth_failures_total', { reason: 'token_unknown' })) >= 200, 'each unknown token counts as a failed attempt');
  });
});

describe('slow clients are dropped', () => {
  let t: TestFleet;
  before(async () => {
    t = await startTestFleet({
      env: { FLEET_API_HEADERS_TIMEOUT: '300ms', FLEET_API_REQUEST_TIMEOUT: '1m', FLEET_API_BODY_MIN_RATE: '1000', FLEET_API_BODY_RATE_WINDOW: '200ms' },
    });
  });
  after(() => t?.close());

  test('headers not finished within the headers timeout: closed', { timeout: 20_000 }, async () => {
    const raw = rawConnect(t.fleet.api.port, t.rootPem);
    assert.equal(await raw.handshake, 'secure');
    raw.socket.write('GET /healthz HTTP/1.1\r\nHost: localhost\r\n');
    await raw.closed;
    assert.doesNotMatch(raw.received(), /^HTTP\/1\.1 200/);
  });

  test('a body trickling in below the minimum rate: closed, and counted', { timeout: 20_000 }, async () => {
    const raw = rawConnect(t.fleet.api.port, t.rootPem);
    raw.socket.write(chunkedHead('POST', '/v1/devices/bulk', { 'Content-Type': 'application/json', Authorization: `Bearer ${t.adminToken}` }));
    const trickle = setInterval(() => raw.socket.write(chunk(' ')), 50);
    try {
      await raw.closed;
    } finally {
      clearInterval(trickle);
    }
    assert.equal(raw.received(), '', 'no answer: the request was never complete');
    assert.ok((await metric(t, 'fleet_api_dropped_connections_total', { reason: 'slow_body' })) >= 1);
  });

  test('a body arriving at a fair rate is read to the end', async () => {
    const raw = rawConnect(t.fleet.api.port, t.rootPem);
    raw.socket.write(chunkedHead('POST', '/v1/devices', { 'Content-Type': 'application/json', Authorization: `Bearer ${t.adminToken}` }));
    raw.socket.write(chunk('{"id":"steady-1"}'));
    raw.socket.write('0\r\n\r\n');
    const text = await raw.until(/\r\n\r\n\{.*\}$/s);
    assert.match(text, /^HTTP\/1\.1 201/);
    assert.doesNotMatch(text, /connection: close/i, 'a request read to its end keeps its connection');
    raw.socket.write('GET /healthz/live HTTP/1.1\r\nHost: localhost\r\n\r\n');
    assert.match(await raw.until(/HTTP\/1\.1 200[^]*\{"status":"live"\}$/), /keep-alive/i);
    raw.socket.destroy();
  });
});

describe('the API caps its connections', () => {
  let t: TestFleet;
  before(async () => {
    t = await startTestFleet({ env: { FLEET_API_MAX_CONNECTIONS: '2' } });
  });
  after(() => t?.close());

  test('past the cap a connection is closed before its handshake; a freed slot is usable again', async () => {
    const held = [rawConnect(t.fleet.api.port, t.rootPem), rawConnect(t.fleet.api.port, t.rootPem)];
    for (const raw of held) assert.equal(await raw.handshake, 'secure');
    const refused = rawConnect(t.fleet.api.port, t.rootPem);
    assert.equal(await refused.handshake, 'closed');
    assert.ok((await metric(t, 'fleet_api_dropped_connections_total', { reason: 'too_many_connections' })) >= 1);

    held[0]!.socket.destroy();
    await held[0]!.closed;
    // The server notices the close a moment later; until then a new connection may still be refused.
    for (;;) {
      const next = rawConnect(t.fleet.api.port, t.rootPem);
      if ((await next.handshake) === 'secure') {
        next.socket.write('GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n');
        assert.match(await next.until(/\r\n\r\n\{.*\}$/s), /^HTTP\/1\.1 200/);
        break;
      }
    }
    held[1]!.socket.destroy();
  });
});
