import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import tls from 'node:tls';
import pg from 'pg';
import { isDatabaseUnavailable } from '../core/db/unavailable.js';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { scratchDatabase, startTestFleet, type TestFleet } from './support/fleet.js';
import { capturingLogger, ERROR, type LogLine } from './support/log.js';
import { openssl, type ProcessResult } from './support/openssl.js';
import { startStallProxy, type StallProxy } from './support/stall-proxy.js';

/**
 * The registry's PostgreSQL failing under a running fleet: reached through a TCP forwarder the test
 * can stall, so the database itself is real and so is the fault.
 */
let t: TestFleet;
let proxy: StallProxy;
let database: { url: string; close(): Promise<void> };
let scratch: string;
let lines: () => LogLine[];

before(async () => {
  scratch = await mkdtemp(path.join(os.tmpdir(), 'fleet-outage-'));
  database = await scratchDatabase(scratch);
  const direct = new URL(database.url);
  proxy = await startStallProxy({ host: direct.hostname, port: Number(direct.port || 5432) });
  const proxied = new URL(database.url);
  proxied.hostname = '127.0.0.1';
  proxied.port = String(proxy.port);
  const captured = capturingLogger();
  lines = captured.lines;
  t = await startTestFleet({ databaseUrl: proxied.toString(), log: captured.log });
});
after(async () => {
  await t?.close();
  await proxy?.close();
  await database?.close();
  await rm(scratch, { recursive: true, force: true });
});

const admin = () => ({ token: t.adminToken });

function assertUnavailable(res: { status: number; headers: Record<string, unknown>; json: any; text: string }) {
  assert.equal(res.status, 503, res.text);
  assert.equal(res.headers['content-type'], 'application/problem+json');
  assert.equal(res.json.code, 'registry_unavailable', res.text);
  assert.match(String(res.headers['retry-after']), /^\d+$/, 'Retry-After in whole seconds');
}

/** Waits (bounded by the test timeout) until a log line matches. */
async function logged(match: (line: LogLine) => boolean): Promise<LogLine> {
  for (;;) {
    const line = lines().find(match);
    if (line) return line;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe('an upload the client abandons', () => {
  test('is logged at info, not as an error, and not answered as a 500', async () => {
    // A chunked body: one chunk promised at 90 bytes, part of it sent, then the connection dropped.
    const socket = tls.connect({ host: '127.0.0.1', port: t.fleet.api.port, servername: 'localhost', ca: t.rootPem });
    await once(socket, 'secureConnect');
    socket.write(
      'POST /v1/enrollments HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5a\r\n' +
        '{"token":"' + 'x'.repeat(40),
    );
    await new Promise((resolve) => setTimeout(resolve, 100));
    socket.destroy();
    const told = await logged((l) => /client closed the connection/.test(l.msg) || l.level >= ERROR);
    assert.equal(told.level, 30, told.raw);
    assert.deepEqual(lines().filter((l) => l.level >= ERROR).map((l) => l.raw), []);
  });
});

describe('a statement the database cancels (statement_timeout, a cancelled query)', () => {
  test('is answered 503 registry_unavailable with Retry-After, not 500', async () => {
    await t.enroll('outage-locked');
    const holder = new pg.Client({ connectionString: database.url });
    await holder.connect();
    try {
      await holder.query('BEGIN');
      await holder.query('LOCK TABLE devices IN ACCESS EXCLUSIVE MODE');
      const pending = t.api('GET', '/v1/devices/outage-locked', admin());
      // The API's statement waits on our lock; cancelling it is what statement_timeout does (57014).
      for (;;) {
        const { rows } = await holder.query(
          `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()`,
        );
        if (rows.length > 0) {
          for (const { pid } of rows) await holder.query('SELECT pg_cancel_backend($1)', [pid]);
          break;
        }
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      assertUnavailable(await pending);
    } finally {
      await holder.query('ROLLBACK').catch(() => undefined);
      await holder.end();
    }
    assert.equal((await t.api('GET', '/v1/devices/outage-locked', admin())).status, 200);
  });

  test('lock_timeout (55P03) from the real server counts as the registry being unavailable', async () => {
    const holder = new pg.Client({ connectionString: database.url });
    const waiter = new pg.Client({ connectionString: database.url });
    await Promise.all([holder.connect(), waiter.connect()]);
    try {
      await holder.query('BEGIN');
      await holder.query('LOCK TABLE devices IN ACCESS EXCLUSIVE MODE');
      await waiter.query(`SET lock_timeout = '50ms'`);
      const error = await waiter.query('SELECT count(*) FROM devices').then(
        () => undefined,
        (e: unknown) => e,
      );
      assert.equal((error as { code?: string }).code, '55P03');
      assert.ok(isDatabaseUnavailable(error));
      assert.ok(!isDatabaseUnavailable(await waiter.query('SELECT 1/0').catch((e: unknown) => e)), 'a plain SQL error is not an outage');
    } finally {
      await holder.query('ROLLBACK').catch(() => undefined);
      await Promise.all([holder.end(), waiter.end()]);
    }
  });
});

describe('a database that stops answering', () => {
  let good: string;
  let revoked: string;
  let issuingFile: string;
  let chainFile: string;
  let revokedSerial: string;
  let pendingToken: string;

  before(async () => {
    issuingFile = await t.file('issuing.pem', t.fleet.ca.issuing.toString('pem'));
    chainFile = await t.file('chain.pem', t.fleet.ca.chainPem);
    pendingToken = await t.register('outage-pending');
    good = await t.file('good.pem', (await t.enroll('outage-good')).certificatePem);
    const gone = await t.enroll('outage-revoked');
    revoked = await t.file('revoked.pem', gone.certificatePem);
    revokedSerial = gone.serial;
    assert.equal((await t.api('POST', '/v1/devices/outage-revoked/revoke', { ...admin(), json: { reason: 'keyCompromise' } })).status, 200);
    // A relying party fetched the CRL while the registry was up.
    assert.equal((await t.api('GET', '/pki/crl')).status, 200);
    assert.equal((await t.api('GET', '/healthz')).status, 200);
    proxy.stall();
  });

  /** What OCSP must say, from the CRL signed before the outage, about each certificate. */
  const expectedStatuses = () => [[good, 'good'], [revoked, 'revoked']] as const;
  /** openssl's arguments to check an answer about `cert` against our chain. */
  const ocspCheck = (cert: string) => ['-issuer', issuingFile, '-cert', cert, '-CAfile', chainFile, '-no_nonce'];
  /** openssl verified the answer's signature and read this status for `cert`. */
  function assertOcspSays(checked: ProcessResult, cert: string, status: string) {
    assert.equal(checked.code, 0, checked.stdout + checked.stderr);
    assert.match(checked.stderr, /Response verify OK/);
    assert.match(checked.stdout, new RegExp(`${path.basename(cert)}: ${status}`));
  }

  test('operator and enrollment requests get 503 problem+json with Retry-After, not a hang or a 500', async () => {
    assertUnavailable(await t.api('GET', '/v1/devices/outage-good', admin()));
    assertUnavailable(await t.api('POST', '/v1/devices', { ...admin(), json: { id: 'outage-new' } }));
    const csr = (await createDeviceIdentity('outage-pending')).csrPem;
    assertUnavailable(await t.api('POST', '/v1/enrollments', { json: { token: pendingToken, csr } }));
    assert.deepEqual(lines().filter((l) => l.level >= ERROR).map((l) => l.raw), [], 'an outage is a warning, not an error with a stack');
  });

  test('liveness stays up while readiness says the database is failing and the broker is fine', async () => {
    const live = await t.api('GET', '/healthz/live');
    assert.equal(live.status, 200, live.text);
    assert.equal(live.json.status, 'live');
    for (const pathname of ['/healthz/ready', '/healthz']) {
      const ready = await t.api('GET', pathname);
      assert.equal(ready.status, 503, `${pathname}: ${ready.text}`);
      assert.equal(ready.headers['content-type'], 'application/problem+json');
      assert.match(String(ready.headers['retry-after']), /^\d+$/);
      assert.equal(ready.json.code, 'not_ready');
      assert.deepEqual(ready.json.checks, { database: 'failing', broker: 'ok' });
    }
  });

  test('the CRL is still served: the last one signed, which openssl verifies and which lists the revoked certificate', async () => {
    const res = await t.api('GET', '/pki/crl');
    assert.equal(res.status, 200, res.text);
    assert.equal(res.headers['content-type'], 'application/pkix-crl');
    const crl = await t.file('crl.der', res.body);
    const checked = await openssl(['crl', '-inform', 'DER', '-in', crl, '-CAfile', chainFile, '-noout', '-text']);
    assert.equal(checked.code, 0, checked.stderr);
    assert.match(checked.stderr + checked.stdout, /verify OK/);
    assert.match(checked.stdout.replaceAll(':', '').toLowerCase(), new RegExp(revokedSerial.replace(/^0+/, '')));
  });

  test('OCSP still answers from that CRL: good for the good certificate, revoked for the revoked one', async () => {
    for (const [cert, status] of expectedStatuses()) {
      const request = await t.file('req.der', '');
      assert.equal((await openssl(['ocsp', '-issuer', issuingFile, '-cert', cert, '-reqout', request, '-no_nonce'])).code, 0);
      const res = await t.api('POST', '/ocsp', { body: await readFile(request), headers: { 'content-type': 'application/ocsp-request' } });
      assert.equal(res.status, 200);
      const response = await t.file('resp.der', res.body);
      assertOcspSays(await openssl(['ocsp', '-respin', response, ...ocspCheck(cert)]), cert, status);
    }
  });

  test('the plain-HTTP PKI listener serves that same CRL and answers OCSP from it: one publisher behind both listeners', async () => {
    const pkiUrl = `http://127.0.0.1:${t.fleet.api.pkiHttpPort}`;
    const overHttp = await fetch(`${pkiUrl}/pki/crl`);
    assert.equal(overHttp.status, 200, await overHttp.clone().text());
    assert.deepEqual(Buffer.from(await overHttp.arrayBuffer()), (await t.api('GET', '/pki/crl')).body, 'the CRL signed before the outage, as over https');
    for (const [cert, status] of expectedStatuses()) {
      // openssl as the relying party, over plain HTTP, as the certificate's OCSP URL says.
      assertOcspSays(await openssl(['ocsp', '-url', `${pkiUrl}/ocsp`, ...ocspCheck(cert)]), cert, status);
    }
  });

  test('everything recovers once the database answers again', async () => {
    proxy.resume();
    // The pool opens fresh connections; the first may still meet the fault's tail.
    for (;;) {
      const ready = await t.api('GET', '/healthz/ready');
      if (ready.status === 200) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.equal((await t.api('GET', '/v1/devices/outage-good', admin())).status, 200);
  });
});
