import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { fleetCli, fleetCommand } from './support/cli.js';
import { type EnrolledDevice, startTestFleet, type TestFleet } from './support/fleet.js';
import { connectDevice } from './support/mqtt.js';
import { openssl } from './support/openssl.js';
import { eventually } from './support/wait.js';

/**
 * The root signs the issuing CA certificate every mTLS handshake verifies, so its curve is that
 * verify's cost: P-256 by default, P-384 when FLEET_ROOT_CURVE asks, and a root keeps its curve.
 */
const pkiFile = (t: TestFleet, name: string) => path.join(t.dataDir, 'pki', name);
const text = async (file: string) => (await openssl(['x509', '-in', file, '-noout', '-text'])).stdout;
const tlsOf = (t: TestFleet, d: EnrolledDevice) => ({ ca: t.rootPem, cert: d.certificatePem, key: d.identity.keyPem });

async function assertChain(t: TestFleet, issuing: string, curve: RegExp, hash: string): Promise<void> {
  assert.match(await text(pkiFile(t, 'root.crt')), curve);
  assert.match(await text(pkiFile(t, issuing)), new RegExp(`Signature Algorithm: ${hash}`));
  const verified = await openssl(['verify', '-CAfile', pkiFile(t, 'root.crt'), pkiFile(t, issuing)]);
  assert.equal(verified.code, 0, verified.stderr);
}

async function assertDeviceConnects(t: TestFleet, id: string): Promise<void> {
  const device = await t.enroll(id);
  const session = await connectDevice(t.fleet.broker.port, id, tlsOf(t, device));
  assert.equal(session.outcome, 'connected', session.error?.message);
  session.client.end(true);
}

describe('root CA curve', () => {
  let t: TestFleet | undefined;
  after(() => t?.close());

  test('a new fleet\'s root is P-256 and signs its issuing CA with ecdsa-with-SHA256; a device enrolls and connects', async () => {
    t = await startTestFleet();
    await assertChain(t, 'issuing.crt', /NIST CURVE: P-256/, 'ecdsa-with-SHA256');
    await assertDeviceConnects(t, 'p256-root-device');
    await t.close();
    t = undefined;
  });

  test('with FLEET_ROOT_CURVE=P-384 the root is P-384 and signs with SHA-384; it stays so when the setting goes, offline signing included', async () => {
    t = await startTestFleet({ env: { FLEET_ROOT_CURVE: 'P-384' } });
    await assertChain(t, 'issuing.crt', /NIST CURVE: P-384/, 'ecdsa-with-SHA384');
    await assertDeviceConnects(t, 'p384-root-device');

    // The CLI runs with the default (P-256): the existing root must neither change nor be read on the wrong curve.
    const rootBefore = await readFile(pkiFile(t, 'root.crt'), 'utf8');
    const csr = path.join(t.dataDir, 'issuing-2.csr');
    const out = path.join(t.dataDir, 'issuing-2.in');
    for (const args of [['ca', 'rotate', '--csr', csr], ['ca', 'sign-issuing', csr, '--out', out], ['ca', 'import', out]]) {
      const done = await fleetCli(t, args, { FLEET_ROOT_CURVE: undefined });
      assert.equal(done.code, 0, `${args.join(' ')}: ${done.stderr}`);
    }
    assert.equal(await readFile(pkiFile(t, 'root.crt'), 'utf8'), rootBefore);
    await assertChain(t, 'issuing-2.crt', /NIST CURVE: P-384/, 'ecdsa-with-SHA384');
    await eventually(() => t!.fleet.ca.current.generation === 2, 'the fleet took up issuing CA 2');
    await assertDeviceConnects(t, 'p384-root-device-2');
  });

  test('any other value stops the command with one line naming the variable, and makes no CA', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'fleet-root-curve-'));
    try {
      for (const value of ['P-521', 'p384', '']) {
        const refused = await fleetCommand(['start'], { FLEET_ROOT_CURVE: value }, dir);
        assert.equal(refused.code, 2, refused.stderr);
        assert.match(refused.stderr, new RegExp(`^  FLEET_ROOT_CURVE: "${value}" is not a root curve: P-256 \\(the default\\) or P-384$`, 'm'));
        assert.ok(!existsSync(path.join(dir, 'pki', 'root.crt')), 'no root was made');
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
