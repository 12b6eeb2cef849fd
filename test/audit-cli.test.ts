import assert from 'node:assert/strict';
import { rename } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { fleetCli } from './support/cli.js';
import { startTestFleet, type TestFleet } from './support/fleet.js';
import { eventually } from './support/wait.js';

const PASSPHRASE = 'correct horse battery staple';

/**
 * `fleet audit` beside a running fleet, as cron runs it: a CA rotated and the old issuing CA retired
 * with the CLI leaves a device under it, which the audit finds and fails on; once that device is
 * dealt with and the root key taken offline, it passes.
 */
describe('fleet audit', () => {
  let t: TestFleet;
  const cli = (...args: string[]) => fleetCli(t, ['audit', ...args], { FLEET_CA_PASSPHRASE: PASSPHRASE });

  before(async () => {
    t = await startTestFleet({ env: { FLEET_CA_PASSPHRASE: PASSPHRASE } });
    await t.enroll('gen1-dev');
  });
  after(() => t?.close());

  test('a device left under a retired issuing CA is found, and the command exits 1', async () => {
    const rotated = await fleetCli(t, ['ca', 'rotate'], { FLEET_CA_PASSPHRASE: PASSPHRASE });
    assert.equal(rotated.code, 0, rotated.stderr);
    await eventually(() => t.fleet.ca.issuers.length === 2, 'the running fleet took up issuing CA 2');
    await t.enroll('gen2-dev');
    const clean = await cli('issuer_retired_or_expiring');
    assert.equal(clean.code, 0, clean.stderr);
    assert.match(clean.stdout, /no findings/);

    const retired = await fleetCli(t, ['ca', 'retire', '1'], { FLEET_CA_PASSPHRASE: PASSPHRASE });
    assert.equal(retired.code, 0, retired.stderr);
    await eventually(() => t.fleet.ca.issuers.length === 1, 'the running fleet retired issuing CA 1');

    const one = await cli('issuer_retired_or_expiring');
    assert.equal(one.code, 1, one.stderr);
    assert.match(one.stdout, /^issuer_retired_or_expiring \(high\)/);
    assert.match(one.stdout, /gen1-dev .*CN=fleet-auth Issuing CA 1, O=fleet-auth is retired/);
    assert.doesNotMatch(one.stdout, /gen2-dev/);

    const json = await cli('issuer_retired_or_expiring', '--json');
    assert.equal(json.code, 1);
    const result = JSON.parse(json.stdout);
    assert.deepEqual(result.findings.map((f: { deviceId: string }) => f.deviceId), ['gen1-dev']);
    const api = await t.api('GET', '/v1/audits/issuer_retired_or_expiring', { token: t.adminToken });
    assert.deepEqual(api.json.findings, result.findings, 'the CLI and the API say the same');

    const all = await cli();
    assert.equal(all.code, 1);
    assert.match(all.stdout, /^CHECK +SEVERITY +FINDINGS +TITLE\n/);
    assert.match(all.stdout, /\nissuer_retired_or_expiring +high +1 +Active certificates under a retired or expiring issuing CA\n/);
    assert.match(all.stdout, /\nroot_key_online +high +1 /);
  });

  test('with the device re-enrolled and the root key offline, every check passes and the command exits 0', async () => {
    const reenroll = await fleetCli(t, ['device', 'reenroll', 'gen1-dev'], { FLEET_CA_PASSPHRASE: PASSPHRASE });
    assert.equal(reenroll.code, 0, reenroll.stderr);
    const token = reenroll.stdout.trim().split('\n').at(-1)!;
    const res = await t.api('POST', '/v1/enrollments', { json: { token, csr: (await createDeviceIdentity('gen1-dev')).csrPem } });
    assert.equal(res.status, 201, res.text);
    await rename(path.join(t.dataDir, 'pki', 'root.key'), path.join(t.dataDir, 'offline-root.key'));

    const all = await cli('--json');
    assert.equal(all.code, 0, all.stdout);
    const audits = JSON.parse(all.stdout).audits as { check: string; findings: number; ok: boolean }[];
    assert.equal(audits.length, 12);
    // Nobody has connected in this test: a week has not passed, so never_seen is still clean too.
    assert.deepEqual(audits.filter((a) => !a.ok), []);
    const table = await cli();
    assert.equal(table.code, 0);
    assert.equal(table.stdout.trim().split('\n').length, 13);
  });

  test('a check of low or medium severity with findings does not fail the command', async () => {
    const expiring = await cli('device_certificate_expiring', '--days', '3650');
    assert.equal(expiring.code, 0, expiring.stderr);
    assert.match(expiring.stdout, /^device_certificate_expiring \(medium\)/);
    assert.match(expiring.stdout, /gen1-dev/);
    assert.match(expiring.stdout, /gen2-dev/);
    const paged = await cli('device_certificate_expiring', '--days', '3650', '--limit', '1');
    assert.equal(paged.stdout.trim().split('\n').length, 3, 'title, header, one finding');
    const next = /fleet audit device_certificate_expiring --cursor (\S+) --days 3650/.exec(paged.stderr);
    assert.ok(next, paged.stderr);
    const rest = await cli('device_certificate_expiring', '--days', '3650', '--cursor', next[1]!);
    assert.equal(rest.stdout.trim().split('\n').length, 3);
    assert.notEqual(rest.stdout.split('\n')[2], paged.stdout.split('\n')[2]);
  });

  test('an unknown check or a bad threshold is a usage error (exit 2) that says what to do', async () => {
    const cases: [string[], RegExp][] = [
      [['nope'], /there is no audit check "nope"; the checks are: device_certificate_expiring/],
      [['device_certificate_expiring', '--days', '0'], /days: expiring within this many days must be a whole number from 1 to 3650/],
      [['device_certificate_expiring', '--days', 'ten'], /--days takes a whole number, not "ten"/],
      [['root_key_online', '--days', '3'], /check root_key_online takes no days threshold/],
      [['--days', '3'], /thresholds and --cursor apply to one check/],
      [['never_seen', '--limit', '501'], /limit: must be a whole number from 1 to 500/],
      [['never_seen', '--cursor', 'bm9wZQ'], /cursor: not a cursor this check gave out/],
    ];
    for (const [args, message] of cases) {
      const result = await cli(...args);
      assert.equal(result.code, 2, `${args.join(' ')}: ${result.stderr}`);
      assert.match(result.stderr, message);
      assert.equal(result.stdout, '');
    }
    const help = await cli('--help');
    assert.match(help.stdout, /exits 1 when a check of severity high or critical has findings/);
  });
});
