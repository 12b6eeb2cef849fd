import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { caKeyStore, type RunningFleet, startFleet } from '../cli/start.js';
import { openDatabase } from '../core/db/database.js';
import { silentLogger } from '../core/log.js';
import { type IssuingCa, retireIssuingCa, rotateIssuingCa } from '../core/pki/authority.js';
import { x509 } from '../core/pki/x509.js';
import { closed, connectDevice } from './support/mqtt.js';
import { openssl, run } from './support/openssl.js';
import { parseExposition } from './support/prometheus.js';
import { type EnrolledDevice, startTestFleet, type TestFleet } from './support/fleet.js';
import { eventually } from './support/wait.js';

let t: TestFleet;
before(async () => {
  t = await startTestFleet();
});
after(() => t?.close());

const file = (name: string, content: string | Buffer) => t.file(name, content);

const tlsOf = (d: EnrolledDevice) => ({ ca: t.rootPem, cert: d.certificatePem, key: d.identity.keyPem });
const keyIdOf = (pem: string) => new x509.X509Certificate(pem).getExtension(x509.AuthorityKeyIdentifierExtension)!.keyId!.toLowerCase();

/** Waits for the running fleet to take up the rotation it was told about (bounded, not timed). */
async function untilGeneration(generation: number): Promise<void> {
  await eventually(() => t.fleet.ca.current.generation === generation, 'the fleet reloaded the CA');
}

async function crlFor(keyId: string): Promise<string> {
  const res = await t.api('GET', `/pki/crl/${keyId}`);
  assert.equal(res.status, 200, res.text);
  const issuer = await t.api('GET', `/pki/issuers/${keyId}.crt`);
  const issuerPem = new x509.X509Certificate(new Uint8Array(issuer.body)).toString('pem');
  const checked = await openssl(['crl', '-inform', 'DER', '-in', await file('crl.der', res.body), '-CAfile', await file('issuer.pem', issuerPem), '-noout', '-text']);
  assert.match(checked.stderr, /verify OK/, checked.stderr);
  return checked.stdout;
}

async function ocspStatus(device: EnrolledDevice, issuerPem: string): Promise<string> {
  const cert = await file('device.pem', device.certificatePem);
  const issuer = await file('issuer.pem', issuerPem);
  const reqFile = await t.file('req.der', '');
  assert.equal((await openssl(['ocsp', '-issuer', issuer, '-cert', cert, '-reqout', reqFile, '-no_nonce'])).code, 0);
  const res = await t.api('POST', '/ocsp', { body: await readFile(reqFile), headers: { 'content-type': 'application/ocsp-request' } });
  const trust = await file('trust.pem', t.fleet.ca.trustPem);
  const checked = await openssl(['ocsp', '-respin', await file('resp.der', res.body), '-issuer', issuer, '-cert', cert, '-CAfile', trust, '-no_nonce']);
  assert.match(checked.stderr, /Response verify OK/, checked.stdout + checked.stderr);
  return checked.stdout;
}

test('a new issuing CA signs new certificates while the old one still verifies, without a restart', async () => {
  const before = await t.enroll('rotate-old');
  const firstIssuerPem = t.fleet.ca.issuing.toString('pem');
  const firstKeyId = t.fleet.ca.current.keyId;
  assert.equal(keyIdOf(before.certificatePem), firstKeyId);

  const log = silentLogger();
  const made = await rotateIssuingCa({ pool: t.fleet.db.pool, dataDir: t.dataDir, log, keyStore: caKeyStore(t.config, log) });
  assert.equal(made.generation, 2);
  await untilGeneration(2);
  assert.equal(t.fleet.ca.issuers.length, 2);

  const after = await t.enroll('rotate-new');
  assert.match(new x509.X509Certificate(after.certificatePem).issuer, /Issuing CA 2/);
  assert.equal(keyIdOf(after.certificatePem), made.keyId);
  const trusted = await t.api('GET', '/pki/trust.pem');
  const verified = await openssl(['verify', '-CAfile', await file('root.pem', t.rootPem), '-untrusted', await file('trust.pem', trusted.text), await file('new.pem', after.certificatePem)]);
  assert.equal(verified.code, 0, verified.stderr);

  // The broker trusts both issuers now: the new device is admitted, the old one still is.
  for (const [id, device] of [['rotate-new', after], ['rotate-old', before]] as const) {
    const session = await connectDevice(t.fleet.broker.port, id, tlsOf(device));
    assert.equal(session.outcome, 'connected', `${id} connects after the rotation`);
    await session.client.endAsync();
  }

  // Renewal of an old certificate moves the device to the new issuer.
  const fresh = await createDeviceIdentity('rotate-old');
  const renewed = await t.api('POST', '/v1/renewals', { json: { csr: fresh.csrPem }, tls: { cert: before.certificatePem, key: before.identity.keyPem } });
  assert.equal(renewed.status, 201, renewed.text);
  assert.equal(keyIdOf(renewed.json.certificate), made.keyId);

  // Each issuer keeps its own CRL and answers OCSP for its own certificates.
  await t.api('POST', '/v1/devices/rotate-new/revoke', { token: t.adminToken, json: { reason: 'keyCompromise' } });
  assert.match(await crlFor(made.keyId), new RegExp(`Serial Number: ${after.serial}`, 'i'));
  assert.doesNotMatch(await crlFor(firstKeyId), new RegExp(after.serial, 'i'));
  assert.match(await ocspStatus(after, made.certificate.toString('pem')), /: revoked/);
  const stillGood = await t.enroll('rotate-good');
  assert.match(await ocspStatus(stillGood, made.certificate.toString('pem')), /: good/);
  assert.match(await ocspStatus(before, firstIssuerPem), /: good/, 'the first issuer still answers for what it issued');

  const cacerts = await t.api('GET', '/.well-known/est/cacerts');
  const listed = await openssl(['pkcs7', '-inform', 'DER', '-print_certs', '-noout'], Buffer.from(cacerts.text, 'base64'));
  assert.match(listed.stdout, /Issuing CA 1/);
  assert.match(listed.stdout, /Issuing CA 2/);
});

/** What a client that trusts only the root makes of a server: openssl s_client is the judge. */
async function presented(port: number, rootFile: string, client?: EnrolledDevice): Promise<{ verified: boolean; issuer: string; output: string }> {
  const identity = client ? ['-cert', await file('client.pem', client.certificatePem), '-key', await file('client.key', client.identity.keyPem)] : [];
  const result = await openssl(['s_client', '-connect', `127.0.0.1:${port}`, '-servername', 'localhost', '-verify_hostname', 'localhost', '-CAfile', rootFile, '-verify_return_error', ...identity], '');
  const output = result.stdout + result.stderr;
  return { verified: result.code === 0 && /Verify return code: 0 \(ok\)/.test(output), issuer: /^issuer=(.*)$/m.exec(output)?.[1] ?? '', output };
}

/** Both servers of a fleet, as clients that trust only the root see them: openssl, curl and MQTT.js. */
async function assertServersVerify(fleet: RunningFleet, device: EnrolledDevice, issuer: RegExp, when: string): Promise<void> {
  const rootFile = await file('root.pem', t.rootPem);
  for (const [server, port, client] of [['API', fleet.api.port, undefined], ['broker', fleet.broker.port, device]] as const) {
    const seen = await presented(port, rootFile, client);
    assert.ok(seen.verified, `${when}: the ${server} verifies against the root\n${seen.output}`);
    assert.match(seen.issuer, issuer, `${when}: the ${server}'s certificate comes from the current issuing CA`);
  }
  const curl = await run('curl', ['-sS', '--fail', '--cacert', rootFile, `https://localhost:${fleet.api.port}/healthz`]);
  assert.equal(curl.code, 0, `${when}: curl --cacert root verifies the API: ${curl.stderr}`);
  const session = await connectDevice(fleet.broker.port, device.identity.deviceId, tlsOf(device));
  assert.equal(session.outcome, 'connected', `${when}: MQTT.js verifies the broker and is admitted: ${session.error?.message}`);
  await session.client.endAsync();
}

const trustFileOf = (dataDir: string) => readFile(path.join(dataDir, 'pki', 'trust.pem'), 'utf8');
const subjectsIn = (pem: string) => pem.split(/(?<=-----END CERTIFICATE-----)/).filter((p) => p.includes('BEGIN')).map((p) => new x509.X509Certificate(p.trim()).subject);

async function metric(port: number | undefined, name: string): Promise<number | undefined> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  return parseExposition(text).samples.find((s) => s.name === name)?.value;
}

describe('rotation and retirement without an outage, in every running process', () => {
  /** A second `fleet start` on the same data directory and database, as a second host would run. */
  let peer: RunningFleet;
  let peerRunning = false;
  before(async () => {
    peer = await startFleet(t.config, silentLogger());
    peerRunning = true;
  });
  after(() => (peerRunning ? peer.close() : undefined));

  test('rotate and retire re-issue both servers, close the retired CA\'s live sessions in every broker, and keep the trust files right', async () => {
    const log = silentLogger();
    const generation = t.fleet.ca.current.generation;
    const oldA = await t.enroll('retire-old-a');
    const oldB = await t.enroll('retire-old-b');
    const liveA = await connectDevice(t.fleet.broker.port, 'retire-old-a', tlsOf(oldA));
    const liveB = await connectDevice(peer.broker.port, 'retire-old-b', tlsOf(oldB));
    assert.equal(liveA.outcome, 'connected');
    assert.equal(liveB.outcome, 'connected');

    const made = await rotateIssuingCa({ pool: t.fleet.db.pool, dataDir: t.dataDir, log, keyStore: caKeyStore(t.config, log) });
    assert.deepEqual(subjectsIn(await trustFileOf(t.dataDir)).slice(0, 2), [made.certificate.subject, t.fleet.ca.issuing.subject], 'rotate itself rewrites data/pki/trust.pem');
    await untilGeneration(made.generation);
    await eventually(() => peer.ca.current.generation === made.generation, 'the second process reloaded the CA');
    const current = new RegExp(`Issuing CA ${made.generation}\\b`);
    const fresh = await t.enroll('retire-new');
    for (const fleet of [t.fleet, peer]) await assertServersVerify(fleet, fresh, current, 'after rotate');
    assert.ok(liveA.client.connected && liveB.client.connected, 'a rotation alone closes no session');

    await retireIssuingCa({ pool: t.fleet.db.pool, dataDir: t.dataDir }, generation);
    const trustFile = await trustFileOf(t.dataDir);
    assert.ok(!subjectsIn(trustFile).some((s) => new RegExp(`Issuing CA ${generation}\\b`).test(s)), 'retire itself rewrites data/pki/trust.pem');
    // Each broker ends its own session of a device of the retired CA, at once, not at its next handshake.
    await Promise.all([closed(liveA.client), closed(liveB.client)]);
    assert.equal(await metric(t.fleet.metricsPort, 'fleet_broker_retirement_closed_sessions_total'), 1);
    assert.equal(await metric(peer.metricsPort, 'fleet_broker_retirement_closed_sessions_total'), 1);
    await eventually(() => t.fleet.ca.issuers.length === peer.ca.issuers.length && subjectsIn(t.fleet.ca.trustPem).join() === subjectsIn(trustFile).join(), 'both processes dropped the retired CA');
    for (const fleet of [t.fleet, peer]) await assertServersVerify(fleet, fresh, current, 'after retire');
    assert.equal((await t.api('GET', '/pki/trust.pem')).text, trustFile, 'GET /pki/trust.pem serves what data/pki/trust.pem holds');

    const rootFile = await file('root.pem', t.rootPem);
    const bundle = path.join(t.dataDir, 'pki', 'trust.pem');
    assert.equal((await openssl(['verify', '-CAfile', rootFile, '-untrusted', bundle, await file('new.pem', fresh.certificatePem)])).code, 0);
    assert.notEqual((await openssl(['verify', '-CAfile', rootFile, '-untrusted', bundle, await file('old.pem', oldA.certificatePem)])).code, 0);
    const again = await connectDevice(t.fleet.broker.port, 'retire-old-a', tlsOf(oldA));
    assert.equal(again.outcome, 'refused', 'the retired CA\'s device is refused when it reconnects');

    await t.restart();
    await assertServersVerify(t.fleet, fresh, current, 'after a restart following retire');
  });

  test('a start whose server certificate came from an issuing CA retired while nothing ran presents one from the current CA', async () => {
    const log = silentLogger();
    const device = await t.enroll('offline-rotation');
    await peer.close();
    peerRunning = false;
    let made: IssuingCa | undefined;
    // Rotated and retired by the CLI with no server running: nobody re-issued the server certificate yet.
    await t.restart(async () => {
      const before = t.fleet.ca.current.generation;
      const db = await openDatabase(t.config, log);
      try {
        made = await rotateIssuingCa({ pool: db.pool, dataDir: t.dataDir, log, keyStore: caKeyStore(t.config, log) });
        await retireIssuingCa({ pool: db.pool, dataDir: t.dataDir }, before);
      } finally {
        await db.close();
      }
    });
    await assertServersVerify(t.fleet, await t.enroll('offline-rotation-new'), new RegExp(`Issuing CA ${made!.generation}\\b`), 'after an offline rotate and retire');
    const refused = await connectDevice(t.fleet.broker.port, 'offline-rotation', tlsOf(device));
    assert.equal(refused.outcome, 'refused');
  });
});
