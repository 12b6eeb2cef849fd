import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { connectDevice } from './support/mqtt.js';
import { offsetClock } from './support/clock.js';
import { openssl } from './support/openssl.js';
import { type EnrolledDevice, startTestFleet, type TestFleet } from './support/fleet.js';

/**
 * One status for every certificate: what OCSP answers, what the CRL lists and what the broker admits
 * agree, for superseded certificates before and after their overlap, and for held and revoked devices.
 */
const { clock, withClock } = offsetClock();
let t: TestFleet;
let issuingFile: string;
let chainFile: string;
const OVERLAP_MS = 10 * 60_000;
before(async () => {
  t = await startTestFleet({ clock, env: { FLEET_RENEWAL_OVERLAP: '10m' } });
  issuingFile = await t.file('issuing.pem', t.fleet.ca.issuing.toString('pem'));
  chainFile = await t.file('chain.pem', t.fleet.ca.chainPem);
});
after(() => t?.close());

const admin = () => ({ token: t.adminToken });

/** Enrolls a device, renews it once, and returns both certificates, the superseded one first. */
async function renewedDevice(deviceId: string): Promise<{ old: EnrolledDevice; current: EnrolledDevice; acceptUntil: Date }> {
  const old = await t.enroll(deviceId);
  const fresh = await createDeviceIdentity(deviceId);
  const res = await t.api('POST', '/v1/renewals', { json: { csr: fresh.csrPem }, tls: { cert: old.certificatePem, key: old.identity.keyPem } });
  assert.equal(res.status, 201, res.text);
  const current = { identity: fresh, certificatePem: res.json.certificate, chainPem: res.json.chain, serial: res.json.serial };
  const shown = await t.api('GET', `/v1/devices/${deviceId}`, admin());
  const acceptUntil = new Date(shown.json.certificates.find((c: { serial: string }) => c.serial === old.serial).acceptUntil);
  return { old, current, acceptUntil };
}

/** openssl asks and judges; -validity_period lets it take answers from a fleet whose clock runs ahead. */
async function ocsp(device: EnrolledDevice): Promise<string> {
  const cert = await t.file(`${device.serial}.pem`, device.certificatePem);
  const reqFile = await t.file('req.der', '');
  const made = await openssl(['ocsp', '-issuer', issuingFile, '-cert', cert, '-reqout', reqFile, '-no_nonce']);
  assert.equal(made.code, 0, made.stderr);
  const res = await t.api('POST', '/ocsp', { body: await readFile(reqFile), headers: { 'content-type': 'application/ocsp-request' } });
  const respFile = await t.file('resp.der', res.body);
  const checked = await openssl(['ocsp', '-respin', respFile, '-issuer', issuingFile, '-cert', cert, '-CAfile', chainFile, '-no_nonce', '-resp_text', '-validity_period', '86400']);
  assert.equal(checked.code, 0, checked.stderr);
  assert.match(checked.stderr, /Response verify OK/);
  return checked.stdout;
}

/** The CRL as openssl reads it, signature verified. */
async function crl(): Promise<string> {
  const res = await t.api('GET', '/pki/crl');
  const checked = await openssl(['crl', '-inform', 'DER', '-in', await t.file('crl.der', res.body), '-CAfile', chainFile, '-noout', '-text']);
  assert.equal(checked.code, 0, checked.stderr);
  assert.match(checked.stderr, /verify OK/);
  return checked.stdout;
}

/** The CRL's entry for a serial: its text up to the next entry, or undefined when it is not listed. */
function crlEntry(text: string, serial: string): string | undefined {
  const at = text.toUpperCase().indexOf(`SERIAL NUMBER: ${serial.toUpperCase()}`);
  if (at < 0) return undefined;
  const next = text.indexOf('Serial Number:', at + 10);
  return text.slice(at, next < 0 ? undefined : next);
}

async function brokerAdmits(device: EnrolledDevice): Promise<boolean> {
  const session = await connectDevice(t.fleet.broker.port, device.identity.deviceId, { ca: t.rootPem, cert: device.certificatePem, key: device.identity.keyPem });
  session.client.end(true);
  return session.outcome === 'connected';
}

const opensslTime = (text: string, label: string) => new Date(new RegExp(`${label}: (\\w+ +\\d+ [\\d:]+ \\d+ GMT)`).exec(text)![1]!);
const wholeSeconds = (date: Date) => Math.floor(date.getTime() / 1000) * 1000;

describe('a superseded certificate', () => {
  test('is good, unlisted and admitted through its overlap; then revoked (superseded) in OCSP and the CRL, and refused', async () => {
    const { old, current, acceptUntil } = await renewedDevice('sup-overlap');
    assert.equal(acceptUntil.getTime() - Date.now() <= OVERLAP_MS, true);

    const during = await ocsp(old);
    assert.match(during, /: good/);
    // No cache may keep "good" past the moment it stops being true.
    assert.ok(opensslTime(during, 'Next Update').getTime() <= wholeSeconds(acceptUntil), during);
    assert.equal(crlEntry(await crl(), old.serial), undefined);
    assert.equal(await brokerAdmits(old), true);

    await withClock(OVERLAP_MS + 60_000, async () => {
      const afterwards = await ocsp(old);
      assert.match(afterwards, /: revoked/);
      assert.match(afterwards, /Reason: superseded/);
      assert.equal(opensslTime(afterwards, 'Revocation Time').getTime(), wholeSeconds(acceptUntil));
      const entry = crlEntry(await crl(), old.serial);
      assert.ok(entry, 'the CRL lists it once its overlap has ended, though nothing changed in the registry');
      assert.match(entry, /Superseded/);
      assert.equal(await brokerAdmits(old), false);
      assert.match(await ocsp(current), /: good/);
      assert.equal(await brokerAdmits(current), true);
    });
  });
});

describe('a suspended device', () => {
  test('has every unexpired certificate on hold, the superseded one in its overlap too, until it is resumed', async () => {
    const { old, current } = await renewedDevice('sup-held');
    assert.equal((await t.api('POST', '/v1/devices/sup-held/suspend', admin())).status, 200);
    const list = await crl();
    for (const device of [old, current]) {
      const answer = await ocsp(device);
      assert.match(answer, /: revoked/, device.serial);
      assert.match(answer, /Reason: certificateHold/, device.serial);
      assert.match(crlEntry(list, device.serial) ?? '', /Certificate Hold/, `the CRL holds ${device.serial}`);
      assert.equal(await brokerAdmits(device), false);
    }

    assert.equal((await t.api('POST', '/v1/devices/sup-held/resume', admin())).status, 200);
    const released = await crl();
    for (const device of [old, current]) {
      assert.match(await ocsp(device), /: good/, device.serial);
      assert.equal(crlEntry(released, device.serial), undefined);
    }
    const shown = await t.api('GET', '/v1/devices/sup-held', admin());
    assert.deepEqual(shown.json.certificates.map((c: { status: string }) => c.status).sort(), ['active', 'superseded'], 'resuming gives each back what it was');
    assert.equal(await brokerAdmits(old), true, 'still in its overlap');
  });

  test('keeps a superseded certificate whose overlap ended revoked (superseded), not merely held', async () => {
    const { old, current } = await renewedDevice('sup-ended');
    await withClock(OVERLAP_MS + 60_000, async () => {
      assert.equal((await t.api('POST', '/v1/devices/sup-ended/suspend', admin())).status, 200);
      assert.match(await ocsp(old), /Reason: superseded/);
      assert.match(await ocsp(current), /Reason: certificateHold/);
      assert.equal((await t.api('POST', '/v1/devices/sup-ended/resume', admin())).status, 200);
      const answer = await ocsp(old);
      assert.match(answer, /: revoked/);
      assert.match(answer, /Reason: superseded/);
      assert.match(crlEntry(await crl(), old.serial) ?? '', /Superseded/);
    });
  });
});

describe('a revoked device', () => {
  test('has every certificate revoked, the superseded one too', async () => {
    const { old, current } = await renewedDevice('sup-revoked');
    assert.equal((await t.api('POST', '/v1/devices/sup-revoked/revoke', { ...admin(), json: { reason: 'keyCompromise' } })).status, 200);
    const list = await crl();
    for (const device of [old, current]) {
      assert.match(await ocsp(device), /Reason: keyCompromise/, device.serial);
      assert.match(crlEntry(list, device.serial) ?? '', /Key Compromise/, device.serial);
      assert.equal(await brokerAdmits(device), false);
    }
  });
});
