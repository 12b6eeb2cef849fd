import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { projectRoot } from '../core/paths.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { x509 } from '../core/pki/x509.js';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { httpsRequest } from './support/http.js';
import { closed, connectDevice } from './support/mqtt.js';
import { openssl, run } from './support/openssl.js';

const FLEET = path.join(projectRoot, 'dist', 'cli', 'fleet.js');

/**
 * The README's path, as a user walks it: `fleet start` on the embedded database (DATABASE_URL is
 * removed on purpose), then the CLI beside it, curl and openssl for enrollment, an MQTT client.
 */
let dataDir: string;
let server: ChildProcess;
let apiPort: number;
let brokerPort: number;
let env: NodeJS.ProcessEnv;

const fleet = (...args: string[]) => run(process.execPath, [FLEET, ...args], { env });
const lastLine = (text: string) => text.trimEnd().split('\n').at(-1) ?? '';

before(async () => {
  dataDir = await mkdtemp(path.join(os.tmpdir(), 'fleet-cli-'));
  env = { ...process.env, FLEET_DATA_DIR: dataDir, FLEET_API_PORT: '0', FLEET_BROKER_PORT: '0', FLEET_METRICS_PORT: '0', FLEET_PKI_HTTP_PORT: '0', LOG_LEVEL: 'warn' };
  delete env.DATABASE_URL;
  server = spawn(process.execPath, [FLEET, 'start'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  await new Promise<void>((resolve, reject) => {
    server.stderr!.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      const api = /https:\/\/localhost:(\d+)/.exec(stderr);
      const broker = /mqtts:\/\/localhost:(\d+)/.exec(stderr);
      if (api && broker) {
        apiPort = Number(api[1]);
        brokerPort = Number(broker[1]);
        resolve();
      }
    });
    server.once('exit', (code) => reject(new Error(`fleet start exited with ${code}: ${stderr}`)));
  });
});

after(async () => {
  if (server && server.exitCode === null) {
    server.kill('SIGINT');
    await new Promise((resolve) => server.once('exit', resolve));
  }
  await rm(dataDir, { recursive: true, force: true });
});

describe('fleet CLI beside a running `fleet start` on the embedded database', () => {
  test('every command has --help', async () => {
    const commands = [[], ['start'], ['token'], ['token', 'create'], ['device'], ['device', 'add'], ['device', 'import'], ['device', 'reenroll'], ['revoke'], ['suspend'], ['resume'], ['ca'], ['ca', 'rotate']];
    for (const args of commands) {
      const res = await fleet(...args, '--help');
      assert.equal(res.code, 0, `fleet ${args.join(' ')} --help: ${res.stderr}`);
      assert.match(res.stdout, /Usage: fleet/);
    }
  });

  test('enroll with curl and openssl, connect, revoke: the walk-through of the README', async () => {
    const admin = await fleet('token', 'create', '--role', 'admin');
    assert.equal(admin.code, 0, admin.stderr);
    assert.match(lastLine(admin.stdout), /^fleet_op_[A-Za-z0-9_-]{43}$/);
    assert.match(admin.stderr, /shown once/);

    const added = await fleet('device', 'add', 'cli-sensor-1');
    assert.equal(added.code, 0, added.stderr);
    const token = lastLine(added.stdout);
    assert.match(token, /^fleet_enroll_/);

    const root = path.join(dataDir, 'pki', 'root.crt');
    const key = path.join(dataDir, 'cli-sensor-1.key');
    const csr = path.join(dataDir, 'cli-sensor-1.csr.b64');
    const p7 = path.join(dataDir, 'cli-sensor-1.p7.b64');
    const crt = path.join(dataDir, 'cli-sensor-1.crt');
    assert.equal((await openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', key])).code, 0);
    const pem = await openssl(['req', '-new', '-key', key, '-subj', '/CN=cli-sensor-1']);
    await writeFile(csr, pem.stdout.replace(/-----[A-Z ]+-----/g, '').trim() + '\n');
    const curl = await run('curl', [
      '-sS', '--fail-with-body', '--cacert', root, '-u', `cli-sensor-1:${token}`,
      '-H', 'Content-Type: application/pkcs10', '--data-binary', `@${csr}`,
      '-o', p7, `https://localhost:${apiPort}/.well-known/est/simpleenroll`,
    ]);
    assert.equal(curl.code, 0, curl.stderr);
    const p7der = Buffer.from(await readFile(p7, 'utf8'), 'base64');
    assert.equal((await openssl(['pkcs7', '-inform', 'DER', '-print_certs', '-out', crt], p7der)).code, 0);

    const tls = { ca: await readFile(root, 'utf8'), cert: await readFile(crt, 'utf8'), key: await readFile(key, 'utf8') };
    const session = await connectDevice(brokerPort, 'cli-sensor-1', tls);
    assert.equal(session.outcome, 'connected');
    await session.client.publishAsync('devices/cli-sensor-1/telemetry', 'hello', { qos: 1 });
    const ended = closed(session.client);

    const revoked = await fleet('revoke', 'cli-sensor-1', '--reason', 'keyCompromise');
    assert.equal(revoked.code, 0, revoked.stderr);
    assert.match(revoked.stderr, /Revoked cli-sensor-1 and 1 certificate/);
    await ended;
    session.client.end(true);
    const again = await connectDevice(brokerPort, 'cli-sensor-1', tls);
    assert.equal(again.outcome, 'refused');
    assert.equal(again.connack, 5, 'CONNACK 0x05: not authorized');
    again.client.end(true);
  });

  test('imports a CSV batch, suspends, resumes, re-enrolls and revokes the batch', async () => {
    const csv = path.join(dataDir, 'devices.csv');
    await writeFile(csv, 'id,profile,site\ncli-batch-1,mcu,north\ncli-batch-2,,south\n');
    const imported = await fleet('device', 'import', csv, '--batch', 'cli-batch', '--profile', 'gateway');
    assert.equal(imported.code, 0, imported.stderr);
    const lines = imported.stdout.trim().split('\n');
    assert.equal(lines[0], 'id,enrollment_token');
    assert.match(lines[2]!, /^cli-batch-2,fleet_enroll_/);
    assert.match(imported.stderr, /Registered 2 devices as batch cli-batch/);

    assert.equal((await fleet('suspend', 'cli-batch-1')).code, 1, 'a pending device cannot be suspended');

    // Enrolled and connected, then suspended and resumed through the CLI beside the running server.
    const root = await readFile(path.join(dataDir, 'pki', 'root.crt'), 'utf8');
    const identity = await createDeviceIdentity('cli-batch-1');
    const enrolled = await httpsRequest(`https://localhost:${apiPort}/v1/enrollments`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ token: lines[1]!.split(',')[1], csr: identity.csrPem }),
      ca: root,
    });
    assert.equal(enrolled.status, 201, enrolled.text);
    const tls = { ca: root, cert: enrolled.json.certificate as string, key: identity.keyPem };
    const session = await connectDevice(brokerPort, 'cli-batch-1', tls);
    assert.equal(session.outcome, 'connected');
    const ended = closed(session.client);
    const suspended = await fleet('suspend', 'cli-batch-1');
    assert.equal(suspended.code, 0, suspended.stderr);
    assert.match(suspended.stderr, /cli-batch-1 is suspended/);
    await ended;
    session.client.end(true);
    const held = await connectDevice(brokerPort, 'cli-batch-1', tls);
    assert.equal(held.outcome, 'refused', 'a suspended device is refused');
    held.client.end(true);
    const resumed = await fleet('resume', 'cli-batch-1');
    assert.equal(resumed.code, 0, resumed.stderr);
    assert.match(resumed.stderr, /cli-batch-1 is active/);
    const back = await connectDevice(brokerPort, 'cli-batch-1', tls);
    assert.equal(back.outcome, 'connected', 'a resumed device connects with the certificate it held');
    const revokedWithBatch = closed(back.client);
    const reenroll = await fleet('device', 'reenroll', 'cli-batch-1');
    assert.equal(reenroll.code, 0, reenroll.stderr);
    assert.match(lastLine(reenroll.stdout), /^fleet_enroll_/);

    const both = await fleet('revoke', 'cli-batch-1', '--batch', 'cli-batch');
    assert.equal(both.code, 2, 'naming two targets is a usage error');
    const revoked = await fleet('revoke', '--batch', 'cli-batch', '--reason', 'cessationOfOperation');
    assert.equal(revoked.code, 0, revoked.stderr);
    assert.match(revoked.stderr, /Revoked 2 device\(s\) of batch cli-batch/);
    await revokedWithBatch;
    back.client.end(true);
    const gone = await fleet('device', 'reenroll', 'cli-batch-2');
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /revoked for good/);
  });

  test('ca rotate switches the running server to a new issuing CA', async () => {
    const root = await readFile(path.join(dataDir, 'pki', 'root.crt'), 'utf8');
    const issuingSubject = async () => {
      const res = await httpsRequest(`https://localhost:${apiPort}/pki/issuing.crt`, { ca: root });
      return new x509.X509Certificate(new Uint8Array(res.body)).subject;
    };
    assert.match(await issuingSubject(), /Issuing CA 1/);
    const rotated = await fleet('ca', 'rotate');
    assert.equal(rotated.code, 0, rotated.stderr);
    assert.match(rotated.stderr, /Issuing CA 2 .* now signs new certificates/);
    let subject = '';
    for (let i = 0; i < 100 && !/Issuing CA 2/.test(subject); i++) {
      subject = await issuingSubject();
      if (!/Issuing CA 2/.test(subject)) await sleep(50);
    }
    assert.match(subject, /Issuing CA 2/, 'the running server took up the new issuing CA');
  });

  test('mistakes get one clear line and a non-zero exit', async () => {
    const badId = await fleet('device', 'add', 'no/slashes');
    assert.equal(badId.code, 1);
    assert.match(badId.stderr, /^error: .*not a valid device id.*\[device_id_invalid\]$/m);
    const unknown = await fleet('revoke', 'never-registered');
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /error: no device never-registered is registered \[device_not_found\]/);
    const noRole = await fleet('token', 'create');
    assert.notEqual(noRole.code, 0);
    assert.match(noRole.stderr, /--role/);
    const badConfig = await run(process.execPath, [FLEET, 'device', 'add', 'x'], { env: { ...env, FLEET_CERT_LIFETIME: 'forever' } });
    assert.equal(badConfig.code, 2);
    assert.match(badConfig.stderr, /FLEET_CERT_LIFETIME: "forever" is not a duration/);
  });

  test('SIGINT stops the server and its embedded PostgreSQL', async () => {
    server.kill('SIGINT');
    const code = await new Promise((resolve) => server.once('exit', resolve));
    assert.equal(code, 0);
    assert.equal(existsSync(path.join(dataDir, 'postgres', 'postmaster.pid')), false, 'postgres stopped');
  });
});
