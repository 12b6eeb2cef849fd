import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { x509 } from '../core/pki/x509.js';
import { closed, connectDevice } from './support/mqtt.js';
import { offsetClock } from './support/clock.js';
import { openssl } from './support/openssl.js';
import { type EnrolledDevice, startTestFleet, type TestFleet } from './support/fleet.js';

/** The fleet's clock, stepped past expiry and overlaps by withClock. */
const { clock, withClock } = offsetClock();
let t: TestFleet;
before(async () => {
  t = await startTestFleet({ clock, env: { FLEET_ALLOWED_KEYS: 'ec-p256,ec-p384,ed25519,rsa', FLEET_RENEWAL_OVERLAP: '1h' } });
});
after(() => t?.close());

const admin = () => ({ token: t.adminToken });
const tlsOf = (d: EnrolledDevice) => ({ cert: d.certificatePem, key: d.identity.keyPem });

const file = (name: string, content: string | Buffer) => t.file(name, content);

async function crlText(): Promise<string> {
  const crl = await t.api('GET', '/pki/crl');
  const checked = await openssl(['crl', '-inform', 'DER', '-in', await file('crl.der', crl.body), '-CAfile', await file('chain.pem', t.fleet.ca.chainPem), '-noout', '-text']);
  assert.equal(checked.code, 0, checked.stderr);
  assert.match(checked.stderr, /verify OK/);
  return checked.stdout;
}

describe('bulk registration', () => {
  test('registers 10,000 devices in one request as a named batch, each with its own token', async () => {
    const devices = Array.from({ length: 10_000 }, (_, i) => ({ id: `bulk-${String(i).padStart(5, '0')}`, metadata: { slot: i } }));
    const res = await t.api('POST', '/v1/devices/bulk', { ...admin(), json: { batch: 'line-1', profile: 'mcu', metadata: { line: '1' }, devices } });
    assert.equal(res.status, 201, res.text.slice(0, 500));
    assert.equal(res.json.count, 10_000);
    assert.equal(res.json.batch, 'line-1');
    const tokens = new Set(res.json.devices.map((d: { enrollmentToken: string }) => d.enrollmentToken));
    assert.equal(tokens.size, 10_000, 'every device has its own token');
    assert.equal(res.json.devices[1234].id, 'bulk-01234');

    const shown = await t.api('GET', '/v1/devices/bulk-01234', admin());
    assert.equal(shown.json.batch, 'line-1');
    assert.equal(shown.json.profile, 'mcu');
    assert.deepEqual(shown.json.metadata, { line: '1', slot: 1234 });

    const identity = await createDeviceIdentity('bulk-01234');
    const token = res.json.devices[1234].enrollmentToken;
    assert.equal((await t.api('POST', '/v1/enrollments', { json: { token, csr: identity.csrPem } })).status, 201);

    const audit = await t.fleet.db.pool.query(`SELECT count(*)::int AS n FROM audit_log WHERE action = 'device.registered' AND device_id LIKE 'bulk-%' AND actor LIKE 'operator:%'`);
    assert.equal(audit.rows[0].n, 10_000, 'each registration is audited with the operator');
  });

  test('is all or nothing: one bad row refuses the request and names the row', async () => {
    const devices = [{ id: 'aon-1' }, { id: 'aon/2' }, { id: 'aon-3' }, { id: 'aon-1' }];
    const res = await t.api('POST', '/v1/devices/bulk', { ...admin(), json: { devices } });
    assert.equal(res.status, 400);
    assert.equal(res.json.code, 'bulk_rows_invalid');
    assert.deepEqual(res.json.rows.map((r: { row: number }) => r.row), [2, 4]);
    assert.match(res.json.detail, /row 2 \(aon\/2\)/);
    assert.equal((await t.api('GET', '/v1/devices/aon-1', admin())).status, 404, 'nothing was written');

    await t.register('aon-taken');
    const taken = await t.api('POST', '/v1/devices/bulk', { ...admin(), json: { devices: [{ id: 'aon-new' }, { id: 'aon-taken' }] } });
    assert.equal(taken.status, 409);
    assert.equal(taken.json.code, 'device_exists');
    assert.deepEqual(taken.json.devices, ['aon-taken']);
    assert.equal((await t.api('GET', '/v1/devices/aon-new', admin())).status, 404, 'nothing was written');
  });

  test('accepts CSV and answers CSV to factory scripts', async () => {
    const csv = 'id,profile,line\ncsv-1,gateway,7\ncsv-2,,7\n';
    const res = await t.api('POST', '/v1/devices/bulk?batch=csv-batch&profile=mcu', { ...admin(), body: csv, headers: { 'content-type': 'text/csv', accept: 'text/csv' } });
    assert.equal(res.status, 201, res.text);
    const lines = res.text.trim().split('\n');
    assert.equal(lines[0], 'id,enrollment_token');
    assert.match(lines[1]!, /^csv-1,fleet_enroll_/);
    const second = await t.api('GET', '/v1/devices/csv-2', admin());
    assert.equal(second.json.profile, 'mcu');
    assert.equal(second.json.batch, 'csv-batch');
    assert.deepEqual(second.json.metadata, { line: '7' });

    const bad = await t.api('POST', '/v1/devices/bulk', { ...admin(), body: 'name\nx\n', headers: { 'content-type': 'text/csv' } });
    assert.equal(bad.json.code, 'csv_invalid');
  });
});

describe('enrollment a factory can retry', () => {
  test('a batch enrollment issues many certificates and reports each failure on its own', async () => {
    const ids = ['batch-enroll-1', 'batch-enroll-2', 'batch-enroll-3'];
    const tokens = await Promise.all(ids.map((id) => t.register(id)));
    const identities = await Promise.all(ids.map((id) => createDeviceIdentity(id)));
    const enrollments = ids.map((_, i) => ({ token: tokens[i], csr: identities[i]!.csrPem }));
    enrollments.push({ token: tokens[0], csr: (await createDeviceIdentity('batch-enroll-1')).csrPem });
    enrollments.push({ token: 'fleet_enroll_unknown', csr: identities[0]!.csrPem });
    const res = await t.api('POST', '/v1/enrollments/batch', { json: { enrollments } });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.results.length, 5);
    const results = res.json.results as { status: number; problem?: { code: string } }[];
    const statuses = results.map((r) => r.status);
    assert.deepEqual([statuses[1], statuses[2]], [201, 201], JSON.stringify(statuses));
    // Items 0 and 3 share a token and run concurrently: exactly one wins, the other finds it used.
    const shared = [results[0]!, results[3]!];
    assert.equal(shared.filter((r) => r.status === 201).length, 1, JSON.stringify(statuses));
    assert.equal(shared.find((r) => r.status !== 201)?.problem?.code, 'token_used');
    assert.equal(results[4]!.problem?.code, 'token_unknown');
  });
});

describe('certificate policy', () => {
  test('certificates carry the CRL and OCSP locations, and a requested lifetime within bounds', async () => {
    const token = await t.register('policy-1');
    const identity = await createDeviceIdentity('policy-1');
    const res = await t.api('POST', '/v1/enrollments', { json: { token, csr: identity.csrPem, lifetime: '2h' } });
    assert.equal(res.status, 201, res.text);
    const cert = new x509.X509Certificate(res.json.certificate);
    const lifetime = cert.notAfter.getTime() - Date.now();
    assert.ok(lifetime > 1.9 * 3_600_000 && lifetime <= 2 * 3_600_000 + 1000, `lifetime ${lifetime}`);
    const text = await openssl(['x509', '-in', await file('policy.pem', res.json.certificate), '-noout', '-text']);
    const pkiUrl = `http://localhost:${t.fleet.api.pkiHttpPort}`;
    assert.match(text.stdout, new RegExp(`URI:${pkiUrl}/pki/crl`));
    assert.match(text.stdout, new RegExp(`OCSP - URI:${pkiUrl}/ocsp`));
    assert.match(text.stdout, /X509v3 Subject Key Identifier/);
    assert.match(text.stdout, /X509v3 Authority Key Identifier/);

    const token2 = await t.register('policy-2');
    const tooLong = await t.api('POST', '/v1/enrollments', { json: { token: token2, csr: (await createDeviceIdentity('policy-2')).csrPem, lifetime: '1000d' } });
    assert.equal(tooLong.json.code, 'lifetime_not_allowed');
  });

  test('Ed25519 and RSA of 2048 bits are accepted when enabled; short RSA and other curves are not', async () => {
    const enrollWith = async (id: string, algorithm: string[]) => {
      const token = await t.register(id);
      const key = await openssl(['genpkey', ...algorithm]);
      const csr = await openssl(['req', '-new', '-key', await file(`${id}.key`, key.stdout), '-subj', `/CN=${id}`]);
      return t.api('POST', '/v1/enrollments', { json: { token, csr: csr.stdout } });
    };
    assert.equal((await enrollWith('key-ed', ['-algorithm', 'ED25519'])).status, 201);
    assert.equal((await enrollWith('key-rsa', ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048'])).status, 201);
    const short = await enrollWith('key-rsa-short', ['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:1024']);
    assert.equal(short.json.code, 'key_not_allowed');
    assert.match(short.json.detail, /1024-bit RSA/);
    const p521 = await enrollWith('key-p521', ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-521']);
    assert.equal(p521.json.code, 'key_not_allowed');
  });
});

describe('renewal over mTLS', () => {
  test('a new key is accepted, the old certificate is superseded, and the old key is refused', async () => {
    const device = await t.enroll('renew-1');
    const fresh = await createDeviceIdentity('renew-1');
    const renewed = await t.api('POST', '/v1/renewals', { json: { csr: fresh.csrPem }, tls: tlsOf(device) });
    assert.equal(renewed.status, 201, renewed.text);
    assert.equal(renewed.json.previousSerial, device.serial);
    assert.notEqual(renewed.json.serial, device.serial);

    const shown = await t.api('GET', '/v1/devices/renew-1', admin());
    const old = shown.json.certificates.find((c: { serial: string }) => c.serial === device.serial);
    assert.equal(old.status, 'superseded');
    assert.ok(Date.parse(old.acceptUntil) > Date.now(), 'the old certificate is accepted through the overlap');

    const next: EnrolledDevice = { identity: fresh, certificatePem: renewed.json.certificate, chainPem: renewed.json.chain, serial: renewed.json.serial };
    const reuse = await t.api('POST', '/v1/renewals', { json: { csr: device.identity.csrPem }, tls: tlsOf(next) });
    assert.equal(reuse.json.code, 'key_reused', reuse.text);
    const sameKey = await t.api('POST', '/v1/renewals', { json: { csr: fresh.csrPem }, tls: tlsOf(next) });
    assert.equal(sameKey.json.code, 'key_reused');

    const again = await t.api('POST', '/v1/renewals', { json: { csr: (await createDeviceIdentity('renew-1')).csrPem }, tls: tlsOf(device) });
    assert.equal(again.json.code, 'certificate_superseded', 'the old certificate cannot renew a second time');

    const noCert = await t.api('POST', '/v1/renewals', { json: { csr: fresh.csrPem } });
    assert.equal(noCert.json.code, 'client_certificate_required');
  });

  test('the broker accepts the superseded certificate during the overlap and refuses it after', async () => {
    const device = await t.enroll('renew-2');
    const fresh = await createDeviceIdentity('renew-2');
    const renewed = await t.api('POST', '/v1/renewals', { json: { csr: fresh.csrPem }, tls: tlsOf(device) });
    assert.equal(renewed.status, 201);
    const oldTls = { ca: t.rootPem, ...tlsOf(device) };
    const during = await connectDevice(t.fleet.broker.port, 'renew-2', oldTls);
    assert.equal(during.outcome, 'connected');
    await during.client.endAsync();
    const later = await withClock(2 * 3_600_000, () => connectDevice(t.fleet.broker.port, 'renew-2', oldTls));
    assert.equal(later.outcome, 'refused');
    later.client.end(true);
    const withNew = await connectDevice(t.fleet.broker.port, 'renew-2', { ca: t.rootPem, cert: renewed.json.certificate, key: fresh.keyPem });
    assert.equal(withNew.outcome, 'connected');
    await withNew.client.endAsync();
  });

  test('an expired certificate cannot renew; an operator re-enrolls the device', async () => {
    const token = await t.register('renew-expired');
    const identity = await createDeviceIdentity('renew-expired');
    // Issued "three hours ago" with a one-hour lifetime: expired now.
    const issued = await withClock(-3 * 3_600_000, () => t.api('POST', '/v1/enrollments', { json: { token, csr: identity.csrPem, lifetime: '1h' } }));
    assert.equal(issued.status, 201, issued.text);
    const expired = { cert: issued.json.certificate, key: identity.keyPem };
    const res = await t.api('POST', '/v1/renewals', { json: { csr: (await createDeviceIdentity('renew-expired')).csrPem }, tls: expired });
    assert.equal(res.status, 401);
    assert.equal(res.json.code, 'certificate_expired');
    assert.match(res.json.detail, /re-enroll/);

    const grant = await t.api('POST', '/v1/devices/renew-expired/enrollment-token', admin());
    assert.equal(grant.status, 201, grant.text);
    const again = await createDeviceIdentity('renew-expired');
    const reenrolled = await t.api('POST', '/v1/enrollments', { json: { token: grant.json.enrollmentToken, csr: again.csrPem } });
    assert.equal(reenrolled.status, 201, reenrolled.text);
  });

  test('EST simplereenroll renews with curl-style client authentication and an openssl CSR', async () => {
    const device = await t.enroll('renew-est');
    const key = await openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256']);
    const csr = await openssl(['req', '-new', '-key', await file('renew-est.key', key.stdout), '-subj', '/CN=renew-est']);
    const body = csr.stdout.replace(/-----[A-Z ]+-----/g, '').trim();
    const res = await t.api('POST', '/.well-known/est/simplereenroll', { body, headers: { 'content-type': 'application/pkcs10' }, tls: tlsOf(device) });
    assert.equal(res.status, 200, res.text);
    const certs = await openssl(['pkcs7', '-inform', 'DER', '-print_certs'], Buffer.from(res.text, 'base64'));
    assert.match(certs.stdout, /subject=CN ?= ?renew-est/);
  });
});

describe('revocation, suspension and the CRL', () => {
  test('revoking one certificate by serial lists it and closes only its sessions', async () => {
    const device = await t.enroll('serial-1');
    const session = await connectDevice(t.fleet.broker.port, 'serial-1', { ca: t.rootPem, ...tlsOf(device) });
    assert.equal(session.outcome, 'connected');
    const ended = closed(session.client);
    const res = await t.api('POST', `/v1/certificates/${device.serial}/revoke`, { ...admin(), json: { reason: 'superseded' } });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.status, 'revoked');
    await ended;
    session.client.end(true);
    assert.equal((await t.api('GET', '/v1/devices/serial-1', admin())).json.status, 'active', 'the device itself stays');
    assert.match(await crlText(), new RegExp(`Serial Number: ${device.serial}`, 'i'));
    assert.equal((await t.api('POST', '/v1/certificates/00ff/revoke', admin())).json.code, 'certificate_not_found');
  });

  test('revoking a batch revokes every device in it and closes their sessions', async () => {
    const reg = await t.api('POST', '/v1/devices/bulk', { ...admin(), json: { batch: 'recall', devices: [{ id: 'recall-1' }, { id: 'recall-2' }, { id: 'recall-3' }] } });
    const enrolled: EnrolledDevice[] = [];
    for (const d of reg.json.devices) {
      const identity = await createDeviceIdentity(d.id);
      const res = await t.api('POST', '/v1/enrollments', { json: { token: d.enrollmentToken, csr: identity.csrPem } });
      enrolled.push({ identity, certificatePem: res.json.certificate, chainPem: res.json.chain, serial: res.json.serial });
    }
    const session = await connectDevice(t.fleet.broker.port, 'recall-2', { ca: t.rootPem, ...tlsOf(enrolled[1]!) });
    assert.equal(session.outcome, 'connected');
    const ended = closed(session.client);
    const res = await t.api('POST', '/v1/batches/recall/revoke', { ...admin(), json: { reason: 'keyCompromise' } });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.revokedDevices, 3);
    assert.equal(res.json.revokedSerials.length, 3);
    await ended;
    session.client.end(true);
    const crl = await crlText();
    for (const d of enrolled) assert.match(crl, new RegExp(`Serial Number: ${d.serial}`, 'i'));
    assert.equal((await t.api('POST', '/v1/batches/no-such-batch/revoke', admin())).json.code, 'batch_not_found');
  });

  test('suspension holds a device and resumption restores it', async () => {
    const device = await t.enroll('hold-1');
    const tls = { ca: t.rootPem, ...tlsOf(device) };
    const session = await connectDevice(t.fleet.broker.port, 'hold-1', tls);
    const ended = closed(session.client);
    const suspended = await t.api('POST', '/v1/devices/hold-1/suspend', admin());
    assert.equal(suspended.json.status, 'suspended');
    await ended;
    session.client.end(true);
    const refused = await connectDevice(t.fleet.broker.port, 'hold-1', tls);
    assert.equal(refused.outcome, 'refused');
    refused.client.end(true);
    const held = await crlText();
    assert.match(held, new RegExp(`Serial Number: ${device.serial}[\\s\\S]*?Certificate Hold`, 'i'));

    const resumed = await t.api('POST', '/v1/devices/hold-1/resume', admin());
    assert.equal(resumed.json.status, 'active');
    const back = await connectDevice(t.fleet.broker.port, 'hold-1', tls);
    assert.equal(back.outcome, 'connected');
    await back.client.endAsync();
    assert.doesNotMatch(await crlText(), new RegExp(device.serial, 'i'), 'a resumed certificate leaves the CRL');
    assert.equal((await t.api('POST', '/v1/devices/hold-1/resume', admin())).status, 200, 'resuming twice changes nothing');

    // A re-issued token does not lift a hold.
    await t.api('POST', '/v1/devices/hold-1/suspend', admin());
    const grant = await t.api('POST', '/v1/devices/hold-1/enrollment-token', admin());
    const sneaky = await t.api('POST', '/v1/enrollments', { json: { token: grant.json.enrollmentToken, csr: (await createDeviceIdentity('hold-1')).csrPem } });
    assert.equal(sneaky.json.code, 'device_suspended');
    await t.api('POST', '/v1/devices/hold-1/resume', admin());
  });

  test('every state change is in the audit log with the operator who made it', async () => {
    const { rows } = await t.fleet.db.pool.query(
      `SELECT action, actor FROM audit_log WHERE device_id = 'hold-1' ORDER BY id`,
    );
    const actions = rows.map((r) => r.action);
    assert.deepEqual(actions.slice(0, 4), ['device.registered', 'certificate.issued', 'device.suspended', 'device.resumed']);
    assert.match(rows[2].actor, /^operator:[0-9a-f]{12}$/);
  });
});
