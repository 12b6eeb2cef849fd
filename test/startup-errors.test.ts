import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { tempDirs } from './support/temp.js';
import { fleetCommand } from './support/cli.js';
import { scratchDatabase } from './support/fleet.js';

/**
 * The errors a new user meets first, through the real `fleet` command: each is one line, with no
 * stack trace, that names the setting to change, and the process exits non-zero.
 */
const temp = tempDirs();
const tempDir = temp.make;
after(() => temp.removeAll());

const lines = (text: string) => text.split('\n').filter((line) => line.trim() !== '');

describe('errors a new user meets are one line that says what to change', () => {
  let dataDir: string;
  let database: { url: string; close(): Promise<void> };
  let holder: net.Server;
  let held: number;

  before(async () => {
    dataDir = await tempDir('fleet-first-');
    database = await scratchDatabase(await tempDir('fleet-first-db-'));
    holder = net.createServer();
    await new Promise<void>((resolve) => holder.listen(0, resolve));
    held = (holder.address() as net.AddressInfo).port;
  });
  after(async () => {
    holder?.close();
    await database?.close();
  });

  /** `fleet start` on a port someone else holds, or with other settings; it must fail and exit. */
  const start = (env: Record<string, string>) => fleetCommand(['start'], { DATABASE_URL: database.url, ...env }, dataDir);

  const assertOneLine = (res: { code: number; stderr: string }, expected: RegExp) => {
    assert.equal(res.code, 1, res.stderr);
    assert.equal(lines(res.stderr).length, 1, `one line, no stack trace:\n${res.stderr}`);
    assert.match(res.stderr, expected);
    assert.doesNotMatch(res.stderr, /\n\s+at /);
  };

  for (const setting of ['FLEET_API_PORT', 'FLEET_BROKER_PORT', 'FLEET_PKI_HTTP_PORT', 'FLEET_METRICS_PORT']) {
    test(`a port in use names ${setting}`, async () => {
      const res = await start({ [setting]: String(held) });
      assertOneLine(res, new RegExp(`^error: port ${held} is in use \\(${setting}\\); stop what holds it or choose another port`));
    });
  }

  test('fleet start logs JSON when its stdout is not a terminal, and pretty lines when FLEET_LOG_FORMAT=pretty', async () => {
    // The CA keys are not encrypted here, so each start warns; the port in use then ends it.
    const json = await start({ FLEET_API_PORT: String(held) });
    const warning = lines(json.stdout).map((line) => JSON.parse(line) as { level: number; msg: string }).find((entry) => entry.level === 40);
    assert.match(warning!.msg, /not encrypted at rest/);
    const pretty = await start({ FLEET_API_PORT: String(held), FLEET_LOG_FORMAT: 'pretty' });
    assert.match(pretty.stdout, /^\[\d{4}-\d\d-\d\d [\d:.]+\] WARN: the CA private keys are not encrypted at rest/m);
    assert.doesNotMatch(pretty.stdout, /"level"/);
  });

  test('a missing or invalid broker policy names FLEET_BROKER_POLICY', async () => {
    const missing = path.join(dataDir, 'no-such-policy.json');
    assertOneLine(await start({ FLEET_BROKER_POLICY: missing }), /^error: cannot read the broker policy .*no-such-policy\.json \(FLEET_BROKER_POLICY\): no such file or directory/);
    const invalid = path.join(dataDir, 'policy.json');
    await writeFile(invalid, '{"devices": 3}');
    assertOneLine(await start({ FLEET_BROKER_POLICY: invalid }), /^error: the broker policy in .*policy\.json is not valid \(FLEET_BROKER_POLICY\)/);
  });

  test('a missing import file is named, with why', async () => {
    const res = await fleetCommand(['device', 'import', path.join(dataDir, 'devices.csv')], { DATABASE_URL: database.url }, dataDir);
    assertOneLine(res, /^error: cannot read the import file .*devices\.csv: no such file or directory/);
  });

  test('a data directory that cannot be created names FLEET_DATA_DIR, for start and for commands', async () => {
    const file = path.join(dataDir, 'a-file');
    await writeFile(file, '');
    // A command needs the data directory for the embedded database (with DATABASE_URL it needs none).
    for (const [args, url] of [[['start'], database.url], [['token', 'list'], undefined]] as const) {
      const res = await fleetCommand([...args], { DATABASE_URL: url }, path.join(file, 'data'));
      assertOneLine(res, /^error: the data directory .*a-file\/data cannot be created or written \(FLEET_DATA_DIR\): a part of the path is not a directory/);
    }
  });
});
