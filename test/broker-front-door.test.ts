import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import tls from 'node:tls';
import { after, before, describe, test } from 'node:test';
import type { Refusal } from '../broker/admission.js';
import { connectionCap, openFileLimit, reservedFiles } from '../broker/protection.js';
import { caKeyStore } from '../cli/start.js';
import { silentLogger } from '../core/log.js';
import { retireIssuingCa, rotateIssuingCa } from '../core/pki/authority.js';
import { ecSigningAlgorithm, exportPrivateKeyPem, generateEcKeys, importEcPrivateKeyPem, randomSerial, x509 } from '../core/pki/x509.js';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { type EnrolledDevice, startTestFleet, type TestFleet } from './support/fleet.js';
import { connectDevice, type DeviceTls } from './support/mqtt.js';
import { run } from './support/openssl.js';

/*
 * The broker's front door attacked through the real broker: raw TCP, openssl s_client,
 * mosquitto_pub, Node TLS and MQTT.js clients against a fleet started as `fleet start` starts it.
 */

const HOUR = 3_600_000;
const tlsOf = (t: TestFleet, d: EnrolledDevice): DeviceTls => ({ ca: t.rootPem, cert: d.certificatePem, key: d.identity.keyPem });
const refusals = (t: TestFleet, reason: Refusal) => t.fleet.broker.refusals.get(reason) ?? 0;

/** Polls a condition the broker reaches on its own (a count after a close); bounded, not timed. */
async function eventually(check: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 200 && !check(); i++) await sleep(50);
  assert.ok(check(), `never happened: ${what}`);
}

async function metric(t: TestFleet, reason: Refusal): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${t.fleet.metricsPort}/metrics`)).text();
  return Number(new RegExp(`^fleet_broker_refusals_total\\{reason="${reason}"\\} (\\d+)`, 'm').exec(text)?.[1] ?? 0);
}

/** An MQTT 3.1.1 CONNECT with a clean session and a 60 s keepalive. */
function connectPacket(clientId: string): Buffer {
  const id = Buffer.from(clientId);
  const body = Buffer.concat([Buffer.from([0, 4, 0x4d, 0x51, 0x54, 0x54, 4, 0x02, 0, 60, id.length >> 8, id.length & 0xff]), id]);
  assert.ok(body.length < 128, 'a one-byte remaining length');
  return Buffer.concat([Buffer.from([0x10, body.length]), body]);
}

/**
 * openssl s_client as a person at a terminal uses it: `typed` is written once the handshake summary
 * is out, and stdin stays open, so s_client ends only when the broker or the TLS layer ends it.
 */
function sClient(args: string[], typed?: string): Promise<{ code: number | null; output: string }> {
  const child = spawn('openssl', ['s_client', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let output = '';
  let sent = false;
  const collect = (chunk: Buffer) => {
    output += chunk.toString();
    if (typed !== undefined && !sent && /Verify return code/.test(output)) {
      sent = true;
      child.stdin.write(typed);
    }
  };
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);
  if (typed === undefined) child.stdin.end();
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, output })));
}

describe('the front door of a running fleet', () => {
  let t: TestFleet;
  before(async () => {
    t = await startTestFleet({ env: { FLEET_BROKER_CONNECT_TIMEOUT: '5s' } });
  });
  after(() => t?.close());
  const port = () => t.fleet.broker.port;

  test('a peer without a certificate gets a TLS alert, TLS 1.3 and 1.2, counted as no_certificate', async () => {
    const root = await t.file('root.pem', t.rootPem);
    const before = refusals(t, 'no_certificate');
    const common = ['-connect', `127.0.0.1:${port()}`, '-servername', 'localhost', '-CAfile', root, '-ign_eof'];
    const tls13 = await sClient([...common, '-tls1_3']);
    assert.match(tls13.output, /alert certificate required/, tls13.output);
    assert.match(tls13.output, /alert number 116/, 'alert 116, certificate_required');
    const tls12 = await sClient([...common, '-tls1_2']);
    assert.match(tls12.output, /alert handshake failure/, tls12.output);
    await eventually(() => refusals(t, 'no_certificate') === before + 2, 'both counted as no_certificate');
    assert.equal(refusals(t, 'tls_handshake_failed'), 0, 'and not as a failed handshake');
  });

  test('keepalive 0 and keepalive above FLEET_BROKER_KEEPALIVE_MAX get CONNACK 0x02 and are counted', async () => {
    const device = await t.enroll('keepalive-1');
    const before = refusals(t, 'keepalive_too_long');
    for (const keepalive of [0, 1201]) {
      const attempt = await connectDevice(port(), 'keepalive-1', tlsOf(t, device), { keepalive });
      assert.equal(attempt.outcome, 'refused', `keepalive ${keepalive}`);
      assert.equal(attempt.connack, 0x02, 'identifier rejected: the same CONNECT is always refused');
      attempt.client.end(true);
    }
    assert.equal(refusals(t, 'keepalive_too_long'), before + 2);
    assert.equal(await metric(t, 'keepalive_too_long'), before + 2);
    const fine = await connectDevice(port(), 'keepalive-1', tlsOf(t, device), { keepalive: 1200 });
    assert.equal(fine.outcome, 'connected', 'the bound itself is allowed');
    await fine.client.endAsync();
  });

  test('reasons come from the broker\'s own check: only a leaf of a trusted issuing CA is expired or not yet valid', async () => {
    const victim = await t.enroll('reason-1');
    const counts = () => Object.fromEntries((['unknown_ca', 'expired', 'not_yet_valid', 'tls_handshake_failed'] as const).map((r) => [r, refusals(t, r)]));
    const attempt = async (cert: string, key: string) => {
      const { client, outcome, connack } = await connectDevice(port(), 'reason-1', { ca: t.rootPem, cert, key });
      client.end(true);
      assert.equal(outcome, 'refused');
      assert.equal(connack, undefined, 'refused at the handshake');
    };
    const start = counts();

    // Self-signed and expired: not ours, so unknown_ca, whatever else is wrong with it.
    const selfKeys = await generateEcKeys('P-256');
    const selfSigned = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: randomSerial(),
      name: 'CN=reason-1',
      notBefore: new Date(Date.now() - 48 * HOUR),
      notAfter: new Date(Date.now() - 24 * HOUR),
      keys: selfKeys,
      signingAlgorithm: ecSigningAlgorithm('P-256'),
      extensions: [new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth])],
    });
    await attempt(selfSigned.toString('pem'), await exportPrivateKeyPem(selfKeys.privateKey));

    // A leaf the device signed with its own key, sent with the device's real certificate.
    const deviceKey = await importEcPrivateKeyPem(victim.identity.keyPem, 'P-256');
    const deviceCert = new x509.X509Certificate(victim.certificatePem);
    const underling = await createDeviceIdentity('reason-1');
    const deviceSigned = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      subject: 'CN=reason-1',
      issuer: deviceCert.subject,
      notBefore: new Date(Date.now() - HOUR),
      notAfter: new Date(Date.now() + HOUR),
      publicKey: underling.csr.publicKey,
      signingKey: deviceKey,
      signingAlgorithm: ecSigningAlgorithm('P-256'),
      extensions: [new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth])],
    });
    await attempt(deviceSigned.toString('pem') + '\n' + victim.certificatePem, underling.keyPem);
    await eventually(() => counts().unknown_ca === start.unknown_ca! + 2, 'both counted as unknown_ca');

    // Our own issuing CA's leaves, outside their validity.
    const ours = async (notBefore: number, notAfter: number) => {
      const identity = await createDeviceIdentity('reason-1');
      const cert = await t.fleet.ca.sign({
        subject: 'CN=reason-1',
        publicKey: identity.csr.publicKey,
        notBefore: new Date(notBefore),
        notAfter: new Date(notAfter),
        extensions: [new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth])],
      });
      await attempt(cert.toString('pem'), identity.keyPem);
    };
    await ours(Date.now() - 2 * HOUR, Date.now() - HOUR);
    await ours(Date.now() + HOUR, Date.now() + 2 * HOUR);
    await eventually(() => counts().not_yet_valid === start.not_yet_valid! + 1, 'not_yet_valid counted');
    assert.deepEqual(counts(), {
      unknown_ca: start.unknown_ca! + 2,
      expired: start.expired! + 1,
      not_yet_valid: start.not_yet_valid! + 1,
      tls_handshake_failed: start.tls_handshake_failed,
    });
  });

  /** A TLS 1.2 client that asks to renegotiate, then sends CONNECT: whether a CONNACK came back before the broker hung up. */
  async function renegotiateThenConnect(device: EnrolledDevice, clientId: string): Promise<{ sawConnack: boolean }> {
    const socket = tls.connect({ port: port(), host: '127.0.0.1', servername: 'localhost', maxVersion: 'TLSv1.2', ...tlsOf(t, device) });
    socket.on('error', () => undefined);
    let received = Buffer.alloc(0);
    const outcome = new Promise<{ sawConnack: boolean }>((resolve) => {
      socket.on('data', (chunk: Buffer) => {
        received = Buffer.concat([received, chunk]);
        if (received[0] === 0x20) resolve({ sawConnack: true });
      });
      // 'end' as well as 'close': a client whose CONNECT is still held by OpenSSL never finishes closing.
      for (const event of ['end', 'close']) socket.once(event, () => resolve({ sawConnack: false }));
    });
    await once(socket, 'secureConnect');
    socket.renegotiate({}, () => undefined);
    // OpenSSL holds application data until the renegotiation is done, so CONNECT goes out only on a new handshake.
    socket.write(connectPacket(clientId));
    const result = await outcome;
    socket.destroy();
    return result;
  }

  /**
   * Types R into openssl s_client (TLS 1.2, a valid device certificate) and asserts the broker refused:
   * a renegotiation that went through would have s_client verify the server's certificate again.
   */
  async function refusedOpensslRenegotiation(device: EnrolledDevice) {
    const before = refusals(t, 'renegotiation_refused');
    const files = {
      root: await t.file('root.pem', t.rootPem),
      cert: await t.file('device.pem', device.certificatePem),
      key: await t.file('device.key', device.identity.keyPem),
    };
    const typed = await sClient(
      ['-connect', `127.0.0.1:${port()}`, '-servername', 'localhost', '-tls1_2', '-CAfile', files.root, '-cert', files.cert, '-key', files.key],
      'R\n',
    );
    const [, afterR] = typed.output.split('RENEGOTIATING\n');
    assert.ok(afterR !== undefined, `s_client renegotiated: ${typed.output.slice(-400)}`);
    assert.doesNotMatch(afterR, /depth=0/, `no second handshake: ${afterR}`);
    assert.notEqual(typed.code, 0, 'the connection ended in an error');
    await eventually(() => refusals(t, 'renegotiation_refused') === before + 1, 'counted as renegotiation_refused');
  }

  /** The same with Node's TLS client, which then sends CONNECT: no CONNACK may come back. */
  async function refusedNodeRenegotiation(device: EnrolledDevice, clientId: string) {
    const before = refusals(t, 'renegotiation_refused');
    const attempt = await renegotiateThenConnect(device, clientId);
    assert.equal(attempt.sawConnack, false, 'the broker hung up without a CONNACK');
    assert.equal(refusals(t, 'renegotiation_refused'), before + 1);
    assert.equal(t.fleet.broker.sessions.count(clientId), 0);
  }

  test('renegotiation is refused and counted: openssl s_client gets no second handshake, a renegotiating client no CONNACK', async () => {
    const device = await t.enroll('reneg-1');
    await refusedOpensslRenegotiation(device);
    await refusedNodeRenegotiation(device, 'reneg-1');
    const honest = await connectDevice(port(), 'reneg-1', tlsOf(t, device));
    assert.equal(honest.outcome, 'connected', 'the same certificate without renegotiation gets in');
    await honest.client.endAsync();
  });

  describe('after `fleet ca rotate` and `fleet ca retire 1`', () => {
    let old: EnrolledDevice;
    let oldTrustPem: string;
    let issuingCa1: string;
    before(async () => {
      old = await t.enroll('retired-1');
      oldTrustPem = t.fleet.ca.trustPem;
      issuingCa1 = t.fleet.ca.issuing.toString('pem');
      const log = silentLogger();
      const made = await rotateIssuingCa({ pool: t.fleet.db.pool, dataDir: t.dataDir, log, keyStore: caKeyStore(t.config, log) });
      await eventually(() => t.fleet.ca.current.generation === made.generation, 'the rotation was taken up');
      const before = await connectDevice(port(), 'retired-1', tlsOf(t, old));
      assert.equal(before.outcome, 'connected', 'issuing CA 1 is still trusted after the rotation');
      await before.client.endAsync();
      await retireIssuingCa({ pool: t.fleet.db.pool, dataDir: t.dataDir }, 1);
      await eventually(() => t.fleet.ca.issuers.length === 1, 'the retirement was taken up');
    });

    test('a retired CA\'s device is refused even when it sends that CA in its chain (mosquitto_pub, MQTT.js)', async () => {
      const start = refusals(t, 'unknown_ca');
      // mosquitto_pub with a CA file from before the retirement sends issuing CA 1 beside the leaf.
      const published = await run('mosquitto_pub', [
        '-h', 'localhost', '-p', String(port()), '-V', 'mqttv311', '-q', '1', '-i', 'retired-1',
        '--cafile', await t.file('old-trust.pem', oldTrustPem),
        '--cert', await t.file('retired.pem', old.certificatePem),
        '--key', await t.file('retired.key', old.identity.keyPem),
        '-t', 'devices/retired-1/telemetry', '-m', 'still here',
      ]);
      assert.notEqual(published.code, 0, `mosquitto_pub must not publish: ${published.stdout}${published.stderr}`);

      assert.match(new x509.X509Certificate(issuingCa1).subject, /Issuing CA 1/);
      const withChain = await connectDevice(port(), 'retired-1', { ca: t.rootPem, cert: `${old.certificatePem}\n${issuingCa1}\n`, key: old.identity.keyPem });
      withChain.client.end(true);
      assert.equal(withChain.outcome, 'refused');
      assert.equal(withChain.connack, undefined, 'refused at the handshake');
      await eventually(() => refusals(t, 'unknown_ca') === start + 2, 'both counted as unknown_ca');
    });

    test('renegotiation stays refused on the secure context built for the new trust', async () => {
      const device = await t.enroll('reneg-2');
      assert.match(new x509.X509Certificate(device.certificatePem).issuer, /Issuing CA 2/);
      await refusedOpensslRenegotiation(device);
      await refusedNodeRenegotiation(device, 'reneg-2');
    });
  });
});

describe('the connect deadline and the connection cap', () => {
  let t: TestFleet;
  before(async () => {
    t = await startTestFleet({ env: { FLEET_BROKER_MAX_CONNECTIONS: '3', FLEET_BROKER_CONNECT_TIMEOUT: '2s' } });
  });
  after(() => t?.close());

  // The timeout only bounds a broker that never closes them; nothing here is measured.
  test('silent connections, before and after TLS, are closed at the connect timeout and a device then gets in', { timeout: 60_000 }, async () => {
    const port = t.fleet.broker.port;
    const device = await t.enroll('patient-1');
    assert.equal(t.fleet.broker.maxConnections, 3);

    // One finishes TLS with a valid certificate and never sends CONNECT; two never start TLS.
    const silentTls = tls.connect({ port, host: '127.0.0.1', servername: 'localhost', ...tlsOf(t, device) });
    silentTls.on('error', () => undefined);
    await once(silentTls, 'secureConnect');
    const silentTcp = [net.connect({ port, host: '127.0.0.1' }), net.connect({ port, host: '127.0.0.1' })];
    for (const socket of silentTcp) await once(socket, 'connect');
    const silent = [silentTls, ...silentTcp];
    const closedByServer = silent.map((socket) => once(socket, 'close'));

    const full = await connectDevice(port, 'patient-1', tlsOf(t, device));
    full.client.end(true);
    assert.equal(full.outcome, 'refused', 'the silent connections hold every slot');
    await eventually(() => refusals(t, 'too_many_connections') === 1, 'counted as too_many_connections');

    await Promise.all(closedByServer);
    assert.ok(silent.every((socket) => socket.destroyed), 'every silent connection was closed by the broker');
    await eventually(() => refusals(t, 'connect_timeout') === 3, 'each counted as connect_timeout');
    assert.equal(refusals(t, 'tls_handshake_failed'), 0);

    const admitted = await connectDevice(port, 'patient-1', tlsOf(t, device));
    assert.equal(admitted.outcome, 'connected', 'the slots were freed');
    assert.equal(await metric(t, 'connect_timeout'), 3);
    assert.equal(await metric(t, 'too_many_connections'), 1);
    await admitted.client.endAsync();
  });
});

describe('the per-address rate', () => {
  let t: TestFleet;
  before(async () => {
    // A burst of 3 that refills one connection every 1000 s: a fourth is refused for the whole test.
    t = await startTestFleet({ env: { FLEET_BROKER_CONNECT_BURST: '3', FLEET_BROKER_CONNECT_RATE: '0.001', FLEET_BROKER_MAX_CONNECTIONS: '100000000' } });
  });
  after(() => t?.close());

  test('an address past its burst is refused and counted as rate_limited; another address is not', async () => {
    const port = t.fleet.broker.port;
    const device = await t.enroll('burst-1');
    for (let i = 0; i < 3; i++) {
      const ok = await connectDevice(port, 'burst-1', tlsOf(t, device));
      assert.equal(ok.outcome, 'connected', `connection ${i + 1} of the burst`);
      await ok.client.endAsync();
    }
    const refused = await connectDevice(port, 'burst-1', tlsOf(t, device));
    refused.client.end(true);
    assert.equal(refused.outcome, 'refused');
    assert.equal(refused.connack, undefined, 'closed before TLS');
    assert.equal(refusals(t, 'rate_limited'), 1);
    assert.equal(await metric(t, 'rate_limited'), 1);

    const elsewhere = await connectDevice(port, 'burst-1', tlsOf(t, device), { localAddress: '127.0.0.2' } as object);
    assert.equal(elsewhere.outcome, 'connected', 'another address has its own burst');
    await elsewhere.client.endAsync();
  });

  test('FLEET_BROKER_MAX_CONNECTIONS above the open-file limit is lowered to leave room for the API and the database', () => {
    const openFiles = openFileLimit();
    assert.ok(openFiles !== undefined, 'Linux tells the limit');
    assert.equal(t.fleet.broker.maxConnections, openFiles - reservedFiles(openFiles));
  });
});

describe('connection cap from the open-file limit', () => {
  const limits = (soft: string, hard = soft) =>
    `Limit                     Soft Limit           Hard Limit           Units     \nMax open files            ${soft}                ${hard}                files     \n`;

  test('reads the soft limit; unknown where there is none or it is unlimited', () => {
    assert.equal(openFileLimit(() => limits('20000', '1048576')), 20_000);
    assert.equal(openFileLimit(() => limits('unlimited')), undefined);
    assert.equal(openFileLimit(() => { throw new Error('ENOENT'); }), undefined);
  });

  test('derives the cap with room to spare, and never lets configuration exceed it', () => {
    assert.deepEqual(connectionCap(undefined, 20_000), { maxConnections: 18_000, openFiles: 20_000, lowered: false });
    assert.deepEqual(connectionCap(5_000, 20_000), { maxConnections: 5_000, openFiles: 20_000, lowered: false });
    assert.deepEqual(connectionCap(50_000, 20_000), { maxConnections: 18_000, openFiles: 20_000, lowered: true });
    assert.deepEqual(connectionCap(undefined, 1024), { maxConnections: 512, openFiles: 1024, lowered: false });
    assert.deepEqual(connectionCap(undefined, 256), { maxConnections: 1, openFiles: 256, lowered: false });
    assert.deepEqual(connectionCap(undefined, undefined), { maxConnections: 16_000, openFiles: undefined, lowered: false });
  });
});
