import assert from 'node:assert/strict';
import { rename } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { MqttClient } from 'mqtt';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { createOperatorToken, recordPresence } from '../core/registry/index.js';
import { type EnrolledDevice, startTestFleet, type TestFleet } from './support/fleet.js';
import { closed, connectDevice } from './support/mqtt.js';
import { openssl } from './support/openssl.js';
import { manualTime, type ManualTime } from './support/time.js';
import { eventually } from './support/wait.js';

const DAY = 86_400_000;
const HOUR = 3_600_000;

const CHECK_IDS = [
  'device_certificate_expiring',
  'device_certificate_too_old',
  'ca_certificate_expiring',
  'certificate_shared',
  'conflicting_client_ids',
  'revoked_certificate_connected',
  'issuer_retired_or_expiring',
  'key_quality',
  'never_seen',
  'root_key_online',
  'ca_passphrase_unset',
  'metrics_disabled',
];

async function auditList(t: TestFleet): Promise<Record<string, number>> {
  const res = await t.api('GET', '/v1/audits', { token: t.adminToken });
  assert.equal(res.status, 200, res.text);
  return Object.fromEntries(res.json.audits.map((a: { check: string; findings: number }) => [a.check, a.findings]));
}

/** One check's findings; its count in the list must agree (at default thresholds). */
async function findings(t: TestFleet, check: string, query = ''): Promise<any[]> {
  const res = await t.api('GET', `/v1/audits/${check}${query}`, { token: t.adminToken });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.json.check, check);
  assert.equal(res.json.nextCursor, null);
  if (query === '') assert.equal((await auditList(t))[check], res.json.findings.length, `${check}: the list's count and the findings agree`);
  return res.json.findings;
}

const idsOf = (found: { deviceId: string | null }[]) => found.map((f) => f.deviceId).sort();

/** Enrolls with a lifetime the policy allows, as a device asking for one would. */
async function enrollFor(t: TestFleet, deviceId: string, lifetime: string): Promise<EnrolledDevice> {
  const token = await t.register(deviceId);
  const identity = await createDeviceIdentity(deviceId);
  const res = await t.api('POST', '/v1/enrollments', { json: { token, csr: identity.csrPem, lifetime } });
  assert.equal(res.status, 201, res.text);
  return { identity, certificatePem: res.json.certificate, chainPem: res.json.chain, serial: res.json.serial };
}

const connect = (t: TestFleet, device: EnrolledDevice, from = '127.0.0.1') =>
  connectDevice(t.fleet.broker.port, device.identity.deviceId, { ca: t.rootPem, cert: device.certificatePem, key: device.identity.keyPem }, {
    // MQTT.js hands localAddress to tls.connect: the connection comes from this loopback address (the server certificate names 127.0.0.1).
    host: '127.0.0.1',
    ...({ localAddress: from } as object),
  });

async function connected(t: TestFleet, device: EnrolledDevice, from = '127.0.0.1'): Promise<MqttClient> {
  const c = await connect(t, device, from);
  assert.equal(c.outcome, 'connected', `${device.identity.deviceId} from ${from}: ${c.error?.message}`);
  return c.client;
}

const deviceRow = async (t: TestFleet, id: string) => (await t.api('GET', `/v1/devices/${id}`, { token: t.adminToken })).json;

/** Until presence is flushed: the registry shows the device connected, or not. */
const presenceIs = (t: TestFleet, id: string, connectedNow: boolean) =>
  eventually(async () => (await deviceRow(t, id)).connected === connectedNow, `${id} shown ${connectedNow ? 'connected' : 'disconnected'}`);

/** Waits until the broker's batched events hold `count` rows of `kind` (and `reason`) for a device, moving time a second at a time. */
const brokerWrote = (t: TestFleet, time: ManualTime, deviceId: string, kind: string, count: number, reason?: string) =>
  eventually(async () => {
    time.advance(1000);
    const { rows } = await t.fleet.db.pool.query(
      'SELECT count(*)::int AS n FROM device_events WHERE device_id = $1 AND kind = $2 AND ($3::text IS NULL OR reason = $3)',
      [deviceId, kind, reason ?? null],
    );
    return rows[0].n >= count;
  }, `${count} ${kind} event(s) of ${deviceId}`);

describe('audits of certificates over time: expiring, too old, never seen, CA expiring', () => {
  let time: ManualTime;
  let t: TestFleet;
  let seen: EnrolledDevice;
  const serials: Record<string, string> = {};

  before(async () => {
    time = manualTime();
    t = await startTestFleet({ time });
    seen = await t.enroll('exp-a');
    serials['exp-a'] = seen.serial;
    for (const id of ['exp-b', 'exp-c']) serials[id] = (await t.enroll(id)).serial;
    serials['long-1'] = (await enrollFor(t, 'long-1', '200d')).serial;
    const client = await connected(t, seen);
    await presenceIs(t, 'exp-a', true);
    client.end();
    await closed(client);
    await presenceIs(t, 'exp-a', false);
  });
  after(() => t?.close());

  test('a fresh fleet has none of them', async () => {
    for (const check of ['device_certificate_expiring', 'device_certificate_too_old', 'never_seen', 'ca_certificate_expiring']) {
      assert.deepEqual(await findings(t, check), [], check);
    }
  });

  test('devices enrolled over a week ago that never connected are found; the one that connected is not', async () => {
    time.advance(6 * DAY);
    assert.deepEqual(await findings(t, 'never_seen'), [], 'six days is within the default week');
    assert.deepEqual(idsOf(await findings(t, 'never_seen', '?days=5')), ['exp-b', 'exp-c', 'long-1']);
    time.advance(2 * DAY);
    const found = await findings(t, 'never_seen');
    assert.deepEqual(idsOf(found), ['exp-b', 'exp-c', 'long-1']);
    assert.match(found[0].detail, /exp-b enrolled at .* and has never connected/);
  });

  test('certificates within 30 days of expiry are found, soonest first, a page at a time', async () => {
    time.advanceTo(time.now() + 53 * DAY); // day 61 of 90
    const found = await findings(t, 'device_certificate_expiring');
    assert.deepEqual(idsOf(found), ['exp-a', 'exp-b', 'exp-c']);
    assert.equal(found[0].serial, serials[found[0].deviceId]);
    assert.match(found[0].detail, /expires at .*, in 2\d days/);
    assert.deepEqual(idsOf(await findings(t, 'device_certificate_expiring', '?days=200')), ['exp-a', 'exp-b', 'exp-c', 'long-1']);
    assert.deepEqual(await findings(t, 'device_certificate_expiring', '?days=20'), []);

    const first = await t.api('GET', '/v1/audits/device_certificate_expiring?limit=2', { token: t.adminToken });
    assert.equal(first.json.findings.length, 2);
    assert.equal(typeof first.json.nextCursor, 'string');
    const second = await t.api('GET', `/v1/audits/device_certificate_expiring?limit=2&cursor=${first.json.nextCursor}`, { token: t.adminToken });
    assert.equal(second.json.findings.length, 1);
    assert.equal(second.json.nextCursor, null);
    const pages = [...first.json.findings, ...second.json.findings];
    assert.deepEqual(pages.map((f) => f.serial).sort(), Object.values(serials).filter((s) => s !== serials['long-1']).sort());
    const times = pages.map((f) => Date.parse(f.notAfter));
    assert.deepEqual(times, [...times].sort((a, b) => a - b), 'soonest expiry first');
  });

  test('certificates issued longer ago than the threshold are found; the default follows the policy\'s longest lifetime', async () => {
    const defaults = await t.api('GET', '/v1/audits/device_certificate_too_old', { token: t.adminToken });
    assert.equal(defaults.json.thresholds.days, 365, 'FLEET_CERT_LIFETIME_MAX of 397 days, held to a year');
    assert.deepEqual(defaults.json.findings, []);
    assert.deepEqual(idsOf(await findings(t, 'device_certificate_too_old', '?days=60')), ['exp-a', 'exp-b', 'exp-c', 'long-1']);
    assert.deepEqual(await findings(t, 'device_certificate_too_old', '?days=62'), []);

    // The operator shortens the longest lifetime to 60 days and restarts: certificates issued 61 days ago outlived it.
    await t.restart(async () => {
      t.config.maxCertificateLifetimeMs = 60 * DAY;
      t.config.certificateLifetimeMs = 30 * DAY;
    });
    const after = await t.api('GET', '/v1/audits/device_certificate_too_old', { token: t.adminToken });
    assert.equal(after.json.thresholds.days, 60);
    assert.deepEqual(idsOf(after.json.findings), ['exp-a', 'exp-b', 'exp-c', 'long-1']);
    assert.match(after.json.findings[0].detail, /was issued 61 days ago/);
  });

  test('CA certificates within 90 days of their expiry are found: the issuing CA after ten years, the root after twenty', async () => {
    time.advanceTo(time.now() + (3600 - 61) * DAY);
    const found = await findings(t, 'ca_certificate_expiring');
    assert.equal(found.length, 1);
    assert.equal(found[0].role, 'issuing');
    assert.equal(found[0].generation, 1);
    assert.equal(found[0].serial, t.fleet.ca.issuers[0]!.certificate.serialNumber.toLowerCase());
    assert.match(found[0].detail, /issuing CA 1 .* expires at .*, in (49|50) days/);
    assert.deepEqual(await findings(t, 'ca_certificate_expiring', '?days=30'), []);
    assert.deepEqual((await findings(t, 'ca_certificate_expiring', '?days=3650')).map((f) => f.role), ['issuing'], 'the root has 3700 days left');

    time.advanceTo(time.now() + (7250 - 3600) * DAY);
    const late = await findings(t, 'ca_certificate_expiring');
    assert.deepEqual(late.map((f) => f.role), ['root', 'issuing']);
    assert.match(late[0].detail, /^the root CA \(CN=fleet-auth Root CA, O=fleet-auth\) expires at .*, in (49|50) days$/);
    assert.match(late[1].detail, /^issuing CA 1 .* expired at /);
  });
});

describe('audits of sessions: shared certificates, conflicting client ids, revoked identities still connected', () => {
  let time: ManualTime;
  let t: TestFleet;
  const devices: Record<string, EnrolledDevice> = {};

  before(async () => {
    time = manualTime();
    t = await startTestFleet({ time });
    for (const id of ['twin', 'solo', 'fighter', 'victim', 'victim-late', 'victim-cert', 'bystander']) devices[id] = await t.enroll(id);
  });
  after(() => t?.close());

  test('one certificate connecting from two addresses is found; one reconnecting from the same address is not', async () => {
    const twin = devices.twin!;
    const first = await connected(t, twin, '127.0.0.1');
    const second = await connected(t, twin, '127.0.0.2');
    await closed(first); // the broker took the first session over
    await eventually(async () => (await deviceRow(t, 'twin')).peerAddress === '127.0.0.2', 'the broker saw the second address');
    const solo = devices.solo!;
    for (let i = 0; i < 2; i++) {
      const c = await connected(t, solo);
      c.end();
      await closed(c);
    }
    await brokerWrote(t, time, 'twin', 'connected', 2);
    await brokerWrote(t, time, 'twin', 'disconnected', 1, 'takeover');
    await brokerWrote(t, time, 'solo', 'disconnected', 2);

    const found = await findings(t, 'certificate_shared');
    assert.deepEqual(idsOf(found), ['twin']);
    assert.equal(found[0].serial, twin.serial);
    assert.deepEqual(found[0].addresses, ['127.0.0.1', '127.0.0.2']);
    assert.match(found[0].detail, /connected from 2 addresses in the last 1 hour: 127\.0\.0\.1, 127\.0\.0\.2/);

    time.advance(2 * HOUR);
    assert.deepEqual(await findings(t, 'certificate_shared'), [], 'outside the one-hour window');
    assert.deepEqual(idsOf(await findings(t, 'certificate_shared', '?hours=3')), ['twin']);
    second.end();
    await closed(second);
  });

  test('a client id taken over three times in a day is found; once is not, unless the threshold says so', async () => {
    const fighter = devices.fighter!;
    let previous: MqttClient | undefined;
    for (let i = 0; i < 4; i++) {
      const from = i % 2 === 0 ? '127.0.0.1' : '127.0.0.2';
      const c = await connected(t, fighter, from);
      if (previous) await closed(previous);
      previous = c;
    }
    await brokerWrote(t, time, 'fighter', 'disconnected', 3, 'takeover');

    const found = await findings(t, 'conflicting_client_ids');
    assert.deepEqual(idsOf(found), ['fighter'], 'twin was taken over once only');
    assert.equal(found[0].takeovers, 3);
    assert.deepEqual(found[0].addresses, ['127.0.0.1', '127.0.0.2']);
    assert.match(found[0].detail, /fighter's session was taken over 3 times in the last 24 hours/);
    assert.deepEqual(idsOf(await findings(t, 'conflicting_client_ids', '?count=1')), ['fighter', 'twin']);
    assert.deepEqual(await findings(t, 'conflicting_client_ids', '?count=4'), []);
    time.advance(25 * HOUR);
    assert.deepEqual(await findings(t, 'conflicting_client_ids'), [], 'the takeovers are more than a day old');
    previous!.end();
    await closed(previous!);
  });

  test('revoking a connected device leaves no live session behind; a broker that keeps one is found', async () => {
    const bystander = await connected(t, devices.bystander!);
    const victim = await connected(t, devices.victim!);
    await presenceIs(t, 'victim', true);
    const revoked = await t.api('POST', '/v1/devices/victim/revoke', { token: t.adminToken, json: { reason: 'keyCompromise' } });
    assert.equal(revoked.status, 200, revoked.text);
    await closed(victim);
    await presenceIs(t, 'victim', false);
    assert.deepEqual(await findings(t, 'revoked_certificate_connected'), [], 'the live cut worked');
    time.advance(5 * 60_000);
    assert.deepEqual(await findings(t, 'revoked_certificate_connected'), [], 'and stays so');

    // A broker that did not follow the revocation goes on recording the session.
    await recordPresence(t.fleet.db.pool, t.config.brokerNodeId, [{ deviceId: 'victim', connected: true, at: time.clock(), peerAddress: '127.0.0.1', serial: devices['victim']!.serial }]);
    const found = await findings(t, 'revoked_certificate_connected');
    assert.deepEqual(idsOf(found), ['victim']);
    assert.equal(found[0].deviceStatus, 'revoked');
    assert.match(found[0].detail, /victim is connected since .* from 127\.0\.0\.1 although the device was revoked at /);
    bystander.end();
    await closed(bystander);
  });

  test('a session still shown connected just after its revocation is not found until the grace has passed', async () => {
    const late = await connected(t, devices['victim-late']!);
    await presenceIs(t, 'victim-late', true);
    assert.equal((await t.api('POST', '/v1/devices/victim-late/suspend', { token: t.adminToken })).status, 200);
    await closed(late);
    await presenceIs(t, 'victim-late', false);
    // The registry as it is before the broker's presence flush lands: still connected, 10 s after the suspension.
    time.advance(10_000);
    await recordPresence(t.fleet.db.pool, t.config.brokerNodeId, [{ deviceId: 'victim-late', connected: true, at: time.clock(), peerAddress: '127.0.0.1', serial: devices['victim-late']!.serial }]);
    assert.deepEqual(idsOf(await findings(t, 'revoked_certificate_connected')), ['victim'], 'within the grace');
    time.advance(51_000);
    const found = await findings(t, 'revoked_certificate_connected');
    assert.deepEqual(idsOf(found), ['victim', 'victim-late']);
    assert.equal(found[1].deviceStatus, 'suspended');
  });

  test('a session on a revoked certificate of a device still active is found by the serial it presented', async () => {
    const device = devices['victim-cert']!;
    const client = await connected(t, device);
    await presenceIs(t, 'victim-cert', true);
    const res = await t.api('POST', `/v1/certificates/${device.serial}/revoke`, { token: t.adminToken, json: { reason: 'keyCompromise' } });
    assert.equal(res.status, 200, res.text);
    await closed(client);
    await presenceIs(t, 'victim-cert', false);
    time.advance(2 * 60_000);
    assert.deepEqual(idsOf(await findings(t, 'revoked_certificate_connected')), ['victim', 'victim-late']);

    // A broken broker records the session, with the serial it presented.
    await recordPresence(t.fleet.db.pool, t.config.brokerNodeId, [{ deviceId: 'victim-cert', connected: true, at: time.clock(), peerAddress: '127.0.0.1', serial: device.serial }]);
    const found = (await findings(t, 'revoked_certificate_connected')).find((f) => f.deviceId === 'victim-cert');
    assert.ok(found, 'the session on the revoked certificate is found');
    assert.equal(found.deviceStatus, 'active');
    assert.equal(found.certificateStatus, 'revoked');
    assert.equal(found.serial, device.serial);
    assert.match(found.detail, new RegExp(`the certificate it presented \\(${device.serial}\\) was revoked`));
  });
});

describe('key quality against a policy tightened since issuance; metrics and logging off', () => {
  let t: TestFleet;

  before(async () => {
    t = await startTestFleet({ env: { FLEET_ALLOWED_KEYS: 'ec-p256,ec-p384,rsa', FLEET_METRICS_PORT: 'off', LOG_LEVEL: 'error' } });
    await t.enroll('k-p256');
    const p384 = await createDeviceIdentity('k-p384', 'P-384');
    const token = await t.register('k-p384');
    assert.equal((await t.api('POST', '/v1/enrollments', { json: { token, csr: p384.csrPem } })).status, 201);
    const rsaKey = await openssl(['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048']);
    const csr = await openssl(['req', '-new', '-key', await t.file('rsa.key', rsaKey.stdout), '-subj', '/CN=k-rsa']);
    const rsaToken = await t.register('k-rsa');
    assert.equal((await t.api('POST', '/v1/enrollments', { json: { token: rsaToken, csr: csr.stdout } })).status, 201);
  });
  after(() => t?.close());

  const keyTypes = async () =>
    Object.fromEntries((await t.fleet.db.pool.query('SELECT device_id, key_type FROM certificates')).rows.map((r) => [r.device_id, r.key_type]));

  test('each certificate records its key type at issuance', async () => {
    assert.deepEqual(await keyTypes(), { 'k-p256': 'ec-p256', 'k-p384': 'ec-p384', 'k-rsa': 'rsa-2048' });
  });

  test('keys the policy allows are not findings; once it allows only P-256, the others are', async () => {
    assert.deepEqual(await findings(t, 'key_quality'), []);
    await t.restart(async () => {
      t.config.allowedKeys = ['ec-p256'];
    });
    const found = await findings(t, 'key_quality');
    assert.deepEqual(idsOf(found), ['k-p384', 'k-rsa']);
    assert.deepEqual(found.map((f) => f.keyType), ['ec-p384', 'rsa-2048']);
    assert.match(found[1].detail, /carries a rsa-2048 key; the policy allows ec-p256/);
  });

  test('certificates issued before key types were recorded are classified from their PEM', async () => {
    await t.fleet.db.pool.query('UPDATE certificates SET key_type = NULL');
    assert.deepEqual(idsOf(await findings(t, 'key_quality')), ['k-p384', 'k-rsa']);
    assert.deepEqual(await keyTypes(), { 'k-p256': 'ec-p256', 'k-p384': 'ec-p384', 'k-rsa': 'rsa-2048' });

    // A stored certificate that no longer parses is a finding of an unknown key type, not a failed audit.
    await t.fleet.db.pool.query(`UPDATE certificates SET key_type = NULL, pem = 'damaged' WHERE device_id = 'k-p256'`);
    const found = await findings(t, 'key_quality');
    assert.deepEqual(found.map((f) => [f.deviceId, f.keyType]), [['k-p384', 'ec-p384'], ['k-rsa', 'rsa-2048'], ['k-p256', 'unknown']]);
  });

  test('a restart records the key type of every older certificate in the background, without an audit', async () => {
    await t.fleet.db.pool.query('UPDATE certificates SET key_type = NULL');
    await t.restart();
    await eventually(async () => Object.values(await keyTypes()).every((type) => type !== null), 'every key type recorded');
    assert.deepEqual(await keyTypes(), { 'k-p256': 'unknown', 'k-p384': 'ec-p384', 'k-rsa': 'rsa-2048' });
  });

  test('metrics turned off and a log level that hides warnings are found', async () => {
    assert.equal(t.fleet.metricsPort, undefined, 'no metrics listener');
    const found = await findings(t, 'metrics_disabled');
    assert.deepEqual(found.map((f) => f.setting), ['FLEET_METRICS_PORT', 'LOG_LEVEL']);
    assert.match(found[1].detail, /LOG_LEVEL is error/);
  });

  test('as installed, the root key is online and the CA keys are not encrypted: both are found', async () => {
    const [passphrase] = await findings(t, 'ca_passphrase_unset');
    assert.equal(passphrase.location, path.join(t.dataDir, 'pki'));
    assert.match(passphrase.detail, /not encrypted; set FLEET_CA_PASSPHRASE/);
    assert.equal((await findings(t, 'root_key_online')).length, 1);
  });
});

describe('a hardened, healthy fleet: no findings; who may read the audits; bad requests', () => {
  let t: TestFleet;
  let viewer: string;
  let operator: string;

  before(async () => {
    t = await startTestFleet({ env: { FLEET_CA_PASSPHRASE: 'correct horse battery staple' } });
    for (const id of ['clean-1', 'clean-2']) {
      const device = await t.enroll(id);
      const client = await connected(t, device);
      await presenceIs(t, id, true);
      client.end();
      await closed(client);
    }
    const now = new Date();
    viewer = (await createOperatorToken(t.fleet.db.pool, { name: 'watcher', role: 'viewer', actor: 'test', now })).token;
    operator = (await createOperatorToken(t.fleet.db.pool, { name: 'hands', role: 'operator', actor: 'test', now })).token;
  });
  after(() => t?.close());

  test('the root key online is the one finding until it is taken offline; then every check is clean', async () => {
    const before = await auditList(t);
    assert.deepEqual(
      Object.entries(before).filter(([, n]) => n > 0),
      [['root_key_online', 1]],
    );
    const [finding] = await findings(t, 'root_key_online');
    assert.equal(finding.location, path.join(t.dataDir, 'pki', 'root.key'));
    await rename(path.join(t.dataDir, 'pki', 'root.key'), path.join(t.dataDir, 'offline-root.key'));

    const res = await t.api('GET', '/v1/audits', { token: t.adminToken });
    assert.deepEqual(res.json.audits.map((a: { check: string }) => a.check), CHECK_IDS);
    for (const audit of res.json.audits) {
      assert.equal(audit.findings, 0, audit.check);
      assert.equal(audit.ok, true);
      assert.ok(['low', 'medium', 'high', 'critical'].includes(audit.severity));
      assert.ok(audit.title.length > 0 && audit.description.length > 0);
    }
    for (const check of CHECK_IDS) assert.deepEqual(await findings(t, check), [], check);
  });

  test('viewers and operators read the audits; no token, or a wrong one, is refused', async () => {
    for (const token of [viewer, operator]) {
      assert.equal((await t.api('GET', '/v1/audits', { token })).status, 200);
      assert.equal((await t.api('GET', '/v1/audits/key_quality', { token })).status, 200);
    }
    for (const pathname of ['/v1/audits', '/v1/audits/key_quality', '/v1/audits/nope']) {
      const anonymous = await t.api('GET', pathname);
      assert.equal(anonymous.status, 401, pathname);
      assert.equal(anonymous.headers['content-type'], 'application/problem+json');
      assert.equal((await t.api('GET', pathname, { token: `${viewer}x` })).status, 401);
      assert.equal((await t.api('GET', pathname, { headers: { authorization: `Basic ${viewer}` } })).status, 401);
    }
  });

  test('an unknown check is 404, and a bad threshold, limit or cursor is 400, as problems', async () => {
    const unknown = await t.api('GET', '/v1/audits/nope', { token: viewer });
    assert.equal(unknown.status, 404);
    assert.equal(unknown.json.code, 'audit_check_not_found');
    assert.match(unknown.json.detail, /device_certificate_expiring/);
    const forged = (key: unknown) => Buffer.from(JSON.stringify(key)).toString('base64url');
    const bad = [
      '/v1/audits/device_certificate_expiring?days=0',
      '/v1/audits/device_certificate_expiring?days=abc',
      '/v1/audits/device_certificate_expiring?days=3651',
      '/v1/audits/device_certificate_expiring?days=1.5',
      '/v1/audits/device_certificate_expiring?hours=2',
      '/v1/audits/certificate_shared?days=2',
      '/v1/audits/certificate_shared?hours=0',
      '/v1/audits/conflicting_client_ids?count=0',
      '/v1/audits/root_key_online?days=5',
      '/v1/audits/never_seen?limit=0',
      '/v1/audits/never_seen?limit=501',
      '/v1/audits/never_seen?cursor=!!!',
      `/v1/audits/never_seen?cursor=${forged({ a: 1 })}`,
      `/v1/audits/never_seen?cursor=${forged(['a', 'b'])}`,
      `/v1/audits/device_certificate_expiring?cursor=${forged(['not a time', 'ab'])}`,
      `/v1/audits/root_key_online?cursor=${forged(['x'])}`,
    ];
    for (const pathname of bad) {
      const res = await t.api('GET', pathname, { token: viewer });
      assert.equal(res.status, 400, `${pathname}: ${res.text}`);
      assert.equal(res.headers['content-type'], 'application/problem+json');
      assert.equal(res.json.code, 'validation_failed', pathname);
    }
  });

  test('both routes are in the OpenAPI document, for viewers', async () => {
    const doc = (await t.api('GET', '/openapi.json')).json;
    assert.ok(doc.paths['/v1/audits']?.get, '/v1/audits');
    const one = doc.paths['/v1/audits/{check}']?.get;
    assert.ok(one, '/v1/audits/{check}');
    assert.deepEqual(one.parameters.map((p: { name: string }) => p.name).sort(), ['check', 'count', 'cursor', 'days', 'hours', 'limit']);
    assert.ok(one.responses['404'] && one.responses['400']);
    assert.deepEqual(one.tags, ['audits']);
    assert.ok(doc.tags.some((tag: { name: string }) => tag.name === 'audits'));
  });
});
