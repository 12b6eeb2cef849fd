import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cp, mkdir, readlink, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { tempDirs } from './support/temp.js';
import { projectRoot } from '../core/paths.js';
import { FLEET_BIN, fleetCommand, fleetEnv } from './support/cli.js';
import { run } from './support/openssl.js';

/**
 * What a new user meets first: a build only when sources changed (and never a silent one),
 * readable logs on a terminal, JSON elsewhere, and a second start refused in one line. The other
 * errors they meet are in startup-errors.test.ts.
 */
const temp = tempDirs();
const tempDir = temp.make;
after(() => temp.removeAll());

const lines = (text: string) => text.split('\n').filter((line) => line.trim() !== '');

describe('the build runs only when a source is newer than dist/, and says so', () => {
  let project: string;
  const env = { ...process.env };
  delete env.FLEET_BUILD;
  const build = () => run(process.execPath, [path.join(project, 'scripts', 'build-if-stale.mjs')], { cwd: project, env });
  const compiled = () => path.join(project, 'dist', 'src', 'a.js');

  before(async () => {
    // A project of one source file, with this project's script and compiler: the same code path as npm start.
    project = await tempDir('fleet-build-');
    await mkdir(path.join(project, 'src'));
    await cp(path.join(projectRoot, 'scripts'), path.join(project, 'scripts'), { recursive: true });
    // Its own node_modules with only the compiler in it: the bin link it gets must not land in ours.
    await mkdir(path.join(project, 'node_modules'));
    await symlink(path.join(projectRoot, 'node_modules', 'typescript'), path.join(project, 'node_modules', 'typescript'));
    await writeFile(
      path.join(project, 'tsconfig.json'),
      JSON.stringify({ compilerOptions: { module: 'NodeNext', target: 'ES2022', outDir: 'dist', rootDir: '.', strict: true, types: [] }, include: ['src', 'cli'] }),
    );
    await writeFile(path.join(project, 'src', 'a.ts'), 'export const a: number = 1;\n');
    await mkdir(path.join(project, 'cli'));
    await writeFile(path.join(project, 'cli', 'fleet.ts'), '#!/usr/bin/env node\nconsole.log("fleet here");\n');
  });

  test('npm start, npm run sim and npm run fleet call the check, and only npm ci (prepare) builds unconditionally once', async () => {
    const { scripts } = (await import(pathToFileURL(path.join(projectRoot, 'package.json')).href, { with: { type: 'json' } })).default as {
      scripts: Record<string, string>;
    };
    for (const name of ['prepare', 'prestart', 'sim', 'fleet']) {
      assert.match(scripts[name]!, /node scripts\/build-if-stale\.mjs/, `npm run ${name}`);
      assert.doesNotMatch(scripts[name]!, /\btsc\b/, `npm run ${name} must not compile every time`);
    }
  });

  test('a missing dist/ is built, announced on stderr first', async () => {
    const first = await build();
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stderr, /^building fleet-auth \(first build\)…\n/);
    assert.ok(existsSync(compiled()));
  });

  test('the project\'s own bin is linked, so the first npx fleet runs it instead of installing the project into npm\'s cache', async () => {
    const bin = path.join(project, 'node_modules', '.bin', 'fleet');
    assert.equal(await readlink(bin), path.join('..', '..', 'dist', 'cli', 'fleet.js'));
    const res = await run(bin, []);
    assert.equal(res.code, 0, res.stderr);
    assert.equal(res.stdout, 'fleet here\n');
  });

  test('a fresh dist/ is left alone, silently', async () => {
    const before = (await stat(compiled())).mtimeMs;
    const again = await build();
    assert.equal(again.code, 0, again.stderr);
    assert.equal(again.stderr, '');
    assert.equal((await stat(compiled())).mtimeMs, before);
  });

  test('a source newer than its compiled file is rebuilt, naming the source', async () => {
    const later = new Date(Date.now() + 60_000);
    await writeFile(path.join(project, 'src', 'a.ts'), 'export const a: number = 2;\n');
    await utimes(path.join(project, 'src', 'a.ts'), later, later);
    const rebuilt = await build();
    assert.equal(rebuilt.code, 0, rebuilt.stderr);
    assert.match(rebuilt.stderr, /^building fleet-auth \(sources changed: src\/a\.ts\)…/);
    const { a } = (await import(pathToFileURL(compiled()).href + '?2')) as { a: number };
    assert.equal(a, 2);
  });

  test('a failed build stops what was to run, with a line saying so', async () => {
    const later = new Date(Date.now() + 120_000);
    await writeFile(path.join(project, 'src', 'a.ts'), 'export const a: number = "not a number";\n');
    await utimes(path.join(project, 'src', 'a.ts'), later, later);
    const failed = await build();
    assert.equal(failed.code, 1);
    assert.match(failed.stderr, /error: the build failed/);
  });
});

describe('logs: JSON for collectors, readable lines on a terminal', () => {
  const logUrl = pathToFileURL(path.join(projectRoot, 'dist', 'core', 'log.js')).href;
  // A process that logs a secret-bearing entry the way fleet start's logger does, to its stdout.
  const script = (format: string) =>
    `const { logTo } = await import(${JSON.stringify(logUrl)});` +
    `const log = logTo(1, 'info', ${format === 'auto' ? 'undefined' : JSON.stringify(format)});` +
    `log.info({ token: 'fleet_op_SECRET', device: 'sensor-1' }, 'token created'); log.warn('careful');`;
  const logWith = (format: string) => run(process.execPath, ['--input-type=module', '-e', script(format)]);

  test('not a terminal: one JSON object per line, secrets redacted', async () => {
    for (const format of ['auto', 'json']) {
      const res = await logWith(format);
      assert.equal(res.code, 0, res.stderr);
      const [info, warn] = lines(res.stdout).map((line) => JSON.parse(line) as Record<string, unknown>);
      assert.equal(info!.level, 30);
      assert.equal(info!.msg, 'token created');
      assert.equal(info!.token, '[redacted]');
      assert.equal(warn!.level, 40);
      assert.doesNotMatch(res.stdout, /SECRET/);
    }
  });

  test('pretty when forced: local time, level names, the fields after the message, secrets still redacted', async () => {
    const res = await logWith('pretty');
    assert.equal(res.code, 0, res.stderr);
    const [info, warn] = lines(res.stdout);
    assert.match(info!, /^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] INFO: token created \{.*"device":"sensor-1".*\}$/);
    assert.match(info!, /"token":"\[redacted\]"/);
    assert.match(warn!, /^\[[^\]]+\] WARN: careful$/);
    assert.doesNotMatch(res.stdout, /SECRET|"level"/);
  });

  test('on a terminal without FLEET_LOG_FORMAT the lines are pretty', async (t) => {
    if (!existsSync('/usr/bin/script')) return t.skip('util-linux script(1), which gives the process a terminal, is not installed');
    const command = [process.execPath, '--input-type=module', '-e', script('auto')].map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(' ');
    const res = await run('/usr/bin/script', ['-qec', command, '/dev/null']);
    assert.equal(res.code, 0, res.stderr);
    const plain = res.stdout.replace(/\x1b\[[0-9;]*m/g, '');
    assert.match(plain, /\] INFO: token created/);
    assert.doesNotMatch(plain, /"level":30|SECRET/);
  });
});

describe('a second fleet start on the same data directory', () => {
  let dataDir: string;
  let first: ChildProcess;

  before(async () => {
    dataDir = await tempDir('fleet-second-');
    // The embedded database on purpose: that is what two starts would share.
    first = spawn(process.execPath, [FLEET_BIN, 'start'], { env: fleetEnv(dataDir), stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    await new Promise<void>((resolve, reject) => {
      first.stderr!.on('data', (chunk: Buffer) => {
        stderr += chunk.toString();
        if (stderr.includes('fleet-auth is running.')) resolve();
      });
      first.once('exit', (code) => reject(new Error(`the first fleet start exited with ${code}: ${stderr}`)));
    });
  });
  after(async () => {
    if (first && first.exitCode === null) {
      first.kill('SIGINT');
      await new Promise((resolve) => first.once('exit', resolve));
    }
  });

  test('is refused in one line that says what to do, and the first keeps running', async () => {
    const second = await fleetCommand(['start'], {}, dataDir);
    assert.equal(second.code, 1, second.stderr);
    assert.equal(lines(second.stderr).length, 1, second.stderr);
    assert.match(second.stderr, /^error: another fleet start \(pid \d+\) runs on .* and owns its embedded database; stop that one first, or give this one another FLEET_DATA_DIR/);
    assert.equal(first.exitCode, null);
    const list = await fleetCommand(['token', 'list'], {}, dataDir);
    assert.equal(list.code, 0, list.stderr);
  });
});
