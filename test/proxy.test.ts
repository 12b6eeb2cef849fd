import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadConfig } from '../core/config.js';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { trustedProxies } from '../provisioning/client-certificate.js';
import { startTestFleet, type EnrolledDevice, type TestFleet } from './support/fleet.js';
import { httpsRequest } from './support/http.js';
import { capturingLogger, type LogLine, WARN } from './support/log.js';
import { findNginx, type RunningNginx, startNginx } from './support/nginx.js';
import { openssl, run } from './support/openssl.js';

/**
 * The API behind a real nginx that terminates TLS and forwards the client certificate. nginx
 * connects to the API from 127.0.0.2 (proxy_bind), the only trusted proxy address; the test's
 * direct requests come from 127.0.0.1, or from 127.0.0.2 where it plays a proxy that misbehaves.
 */
const PROXY_ADDRESS = '127.0.0.2';
const nginxBinary = await findNginx();
const skip = nginxBinary ? false : 'nginx is not installed (apt-get install nginx; .ci/run installs it)';

let t: TestFleet;
let nginx: RunningNginx;
let dir: string;
let lines: () => LogLine[];

/** The location block the README shows, with this test's upstream and files. */
const nginxSite = (files: { cert: string; key: string; trust: string; root: string }, apiPort: number) => (port: number) => `
  server {
    listen 127.0.0.1:${port} ssl;
    ssl_certificate ${files.cert};
    ssl_certificate_key ${files.key};
    # Ask for a device certificate; enrollment with a token comes without one.
    ssl_client_certificate ${files.trust};
    ssl_verify_client optional;
    ssl_verify_depth 2;
    location / {
      proxy_pass https://127.0.0.1:${apiPort};
      proxy_bind ${PROXY_ADDRESS};
      proxy_ssl_trusted_certificate ${files.root};
      proxy_ssl_verify on;
      proxy_ssl_name localhost;
      proxy_ssl_server_name on;
      # Set on every request, so a client's own headers of these names never reach the API.
      proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert;
      proxy_set_header X-SSL-Client-Verify $ssl_client_verify;
    }
  }`;

before(async () => {
  if (skip) return;
  dir = await mkdtemp(path.join(os.tmpdir(), 'fleet-nginx-'));
  const captured = capturingLogger();
  lines = captured.lines;
  t = await startTestFleet({
    env: { FLEET_TRUSTED_PROXIES: PROXY_ADDRESS, FLEET_PROXY_CERT_HEADER: 'X-SSL-Client-Cert', FLEET_PROXY_VERIFY_HEADER: 'X-SSL-Client-Verify' },
    log: captured.log,
  });
  const files = {
    cert: await t.file('nginx.crt', t.fleet.ca.server.certificatePem),
    key: await t.file('nginx.key', t.fleet.ca.server.keyPem),
    trust: await t.file('trust.pem', t.fleet.ca.trustPem),
    root: await t.file('root.pem', t.rootPem),
  };
  nginx = await startNginx(nginxBinary!, dir, nginxSite(files, t.fleet.api.port));
});
after(async () => {
  await nginx?.stop();
  await t?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** curl through nginx, as a device would call it. */
async function curlThroughNginx(pathname: string, args: string[]) {
  const rootFile = await t.file('curl-root.pem', t.rootPem);
  const result = await run('curl', ['-sS', '--cacert', rootFile, '-w', '\n%{http_code}', ...args, `https://localhost:${nginx.port}${pathname}`]);
  assert.equal(result.code, 0, result.stderr);
  const at = result.stdout.lastIndexOf('\n');
  return { status: Number(result.stdout.slice(at + 1)), body: result.stdout.slice(0, at) };
}

const deviceFiles = async (device: EnrolledDevice) => ({
  cert: await t.file(`${device.identity.deviceId}.crt`, device.certificatePem),
  key: await t.file(`${device.identity.deviceId}.key`, device.identity.keyPem),
});

/** A request straight to the API, not through nginx, from `from`. */
const direct = (pathname: string, headers: Record<string, string>, body: unknown, from = '127.0.0.1') =>
  httpsRequest(`https://localhost:${t.fleet.api.port}${pathname}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
    ca: t.rootPem,
    localAddress: from,
  });

const escaped = (pem: string) => encodeURIComponent(pem);
const warnings = (pattern: RegExp) => lines().filter((l) => l.level === WARN && pattern.test(l.msg));

describe('renewal behind a TLS-terminating nginx', { skip }, () => {
  test('works over JSON and EST with the device certificate presented to nginx', async () => {
    const device = await t.enroll('proxied-1');
    const { cert, key } = await deviceFiles(device);
    const fresh = await createDeviceIdentity('proxied-1');
    const body = await t.file('renew.json', JSON.stringify({ csr: fresh.csrPem }));
    const renewed = await curlThroughNginx('/v1/renewals', ['--cert', cert, '--key', key, '-H', 'content-type: application/json', '--data-binary', `@${body}`]);
    assert.equal(renewed.status, 201, renewed.body);
    const issued = JSON.parse(renewed.body);
    assert.equal(issued.previousSerial, device.serial);

    // EST's simplereenroll with the renewed certificate, also through nginx.
    const next = { cert: await t.file('next.crt', issued.certificate), key: await t.file('next.key', fresh.keyPem) };
    const csr = await t.file('est.b64', (await createDeviceIdentity('proxied-1')).csrBase64);
    const est = await curlThroughNginx('/.well-known/est/simplereenroll', [
      '--cert', next.cert, '--key', next.key, '-H', 'content-type: application/pkcs10', '--data-binary', `@${csr}`,
    ]);
    assert.equal(est.status, 200, est.body);
    const p7 = await t.file('est.p7', Buffer.from(est.body, 'base64'));
    const printed = await openssl(['pkcs7', '-inform', 'DER', '-in', p7, '-print_certs', '-noout']);
    assert.match(printed.stdout, /subject=CN ?= ?proxied-1/);
  });

  test('a client without a certificate cannot slip its own forwarded-certificate headers through nginx', async () => {
    const device = await t.enroll('proxied-forger');
    const fresh = await createDeviceIdentity('proxied-forger');
    const body = await t.file('forged.json', JSON.stringify({ csr: fresh.csrPem }));
    const res = await curlThroughNginx('/v1/renewals', [
      '-H', 'content-type: application/json',
      '-H', `X-SSL-Client-Cert: ${escaped(device.certificatePem)}`,
      '-H', 'X-SSL-Client-Verify: SUCCESS',
      '--data-binary', `@${body}`,
    ]);
    assert.equal(res.status, 401, res.body);
    assert.equal(JSON.parse(res.body).code, 'client_certificate_required');
  });

  test('a forged header sent straight to the API, not from a trusted proxy, is ignored and logged', async () => {
    const device = await t.enroll('proxied-direct');
    const fresh = await createDeviceIdentity('proxied-direct');
    const res = await direct('/v1/renewals', { 'X-SSL-Client-Cert': escaped(device.certificatePem), 'X-SSL-Client-Verify': 'SUCCESS' }, { csr: fresh.csrPem });
    assert.equal(res.status, 401, res.text);
    assert.equal(res.json.code, 'client_certificate_required');
    const told = warnings(/not a trusted proxy/);
    assert.ok(told.some((l) => String(l.peer).endsWith('127.0.0.1')), JSON.stringify(told));
    assert.ok(!told.some((l) => l.raw.includes('BEGIN CERTIFICATE') || l.raw.includes('BEGIN%20CERTIFICATE')), 'the header value is not logged');
  });

  test('from the trusted address, a certificate the proxy did not report verified is ignored and logged', async () => {
    const device = await t.enroll('proxied-unverified');
    const csr = (await createDeviceIdentity('proxied-unverified')).csrPem;
    for (const verify of [undefined, 'NONE', 'FAILED:certificate has expired']) {
      const headers: Record<string, string> = { 'X-SSL-Client-Cert': escaped(device.certificatePem) };
      if (verify) headers['X-SSL-Client-Verify'] = verify;
      const res = await direct('/v1/renewals', headers, { csr }, PROXY_ADDRESS);
      assert.equal(res.status, 401, `${verify}: ${res.text}`);
      assert.equal(res.json.code, 'client_certificate_required', `${verify}`);
    }
    assert.equal(warnings(/did not report as verified/).length, 3);
  });

  test('from the trusted address, a verified-looking certificate this CA did not issue is refused', async () => {
    const key = path.join(dir, 'foreign.key');
    const cert = path.join(dir, 'foreign.crt');
    const made = await openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=proxied-1', '-days', '1', '-keyout', key, '-out', cert]);
    assert.equal(made.code, 0, made.stderr);
    const { readFile } = await import('node:fs/promises');
    const headers = { 'X-SSL-Client-Cert': escaped(await readFile(cert, 'utf8')), 'X-SSL-Client-Verify': 'SUCCESS' };
    const res = await direct('/v1/renewals', headers, { csr: (await createDeviceIdentity('proxied-1')).csrPem }, PROXY_ADDRESS);
    assert.equal(res.status, 401, res.text);
    assert.equal(res.json.code, 'client_certificate_invalid');
  });
});

describe('proxy configuration', () => {
  test('takes addresses and CIDR blocks of either family, and refuses anything else by name', () => {
    const config = loadConfig({ FLEET_TRUSTED_PROXIES: '10.0.0.0/8, 192.0.2.7,2001:db8::/32' });
    assert.deepEqual(config.proxy.trustedProxies, ['10.0.0.0/8', '192.0.2.7', '2001:db8::/32']);
    const trusted = trustedProxies(config.proxy);
    assert.ok(trusted.trusts('10.1.2.3') && trusted.trusts('::ffff:10.1.2.3') && trusted.trusts('2001:db8::1') && trusted.trusts('192.0.2.7'));
    assert.ok(!trusted.trusts('192.0.2.8') && !trusted.trusts('11.0.0.1') && !trusted.trusts(undefined));
    assert.ok(!trustedProxies(loadConfig({}).proxy).trusts('127.0.0.1'), 'no proxy is trusted by default');
    for (const bad of ['nginx.local', '10.0.0.0/33', '10.0.0.1/8/1', '*']) {
      assert.throws(() => loadConfig({ FLEET_TRUSTED_PROXIES: bad }), /FLEET_TRUSTED_PROXIES/, bad);
    }
    assert.throws(() => loadConfig({ FLEET_PROXY_CERT_HEADER: 'X-Cert: x' }), /FLEET_PROXY_CERT_HEADER/);
  });
});

describe("Envoy's x-forwarded-client-cert", { skip }, () => {
  let envoyFleet: TestFleet;
  before(async () => {
    envoyFleet = await startTestFleet({ env: { FLEET_TRUSTED_PROXIES: '127.0.0.0/30', FLEET_PROXY_CERT_HEADER: 'x-forwarded-client-cert' } });
  });
  after(() => envoyFleet?.close());

  const xfcc = (pem: string) => `By=spiffe://proxy;Hash=0;Cert="${encodeURIComponent(pem)}";Subject="CN=x"`;
  const post = (headers: Record<string, string>, csr: string, from: string) =>
    httpsRequest(`https://localhost:${envoyFleet.fleet.api.port}/v1/renewals`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ csr }),
      ca: envoyFleet.rootPem,
      localAddress: from,
    });

  test('renews with the Cert of the element the trusted proxy appended, and ignores it from elsewhere', async () => {
    const device = await envoyFleet.enroll('envoy-1');
    const other = await envoyFleet.enroll('envoy-2');
    const csr = (await createDeviceIdentity('envoy-1')).csrPem;
    const untrusted = await post({ 'x-forwarded-client-cert': xfcc(device.certificatePem) }, csr, '127.0.0.5');
    assert.equal(untrusted.json.code, 'client_certificate_required', untrusted.text);
    // An element from further away first, then the trusted proxy's own: only the last one counts.
    const header = `${xfcc(other.certificatePem)},${xfcc(device.certificatePem)}`;
    const renewed = await post({ 'x-forwarded-client-cert': header }, csr, PROXY_ADDRESS);
    assert.equal(renewed.status, 201, renewed.text);
    assert.equal(renewed.json.deviceId, 'envoy-1');
    assert.equal(renewed.json.previousSerial, device.serial);
  });
});
