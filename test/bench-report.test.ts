import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { projectRoot } from '../core/paths.js';
import type { Figures, Report } from '../bench/report.js';
import { MOSQUITTO } from '../bench/systems.js';

/**
 * `npm run bench` in its quick mode, end to end (every system started, the load generator, the
 * report written), checking that the report is well formed. Nothing here asserts a time or a
 * figure's size: the figures of a busy CI machine mean nothing, only that there are figures.
 */
const RUN = path.join(projectRoot, 'dist', 'bench', 'run.js');
const systems = ['floor', 'aedes', 'fleet-auth', ...(existsSync(MOSQUITTO) ? ['mosquitto'] : [])];

let out: string;
let report: Report;
let markdown: string;
let stderr: string;

before(async () => {
  out = await mkdtemp(path.join(os.tmpdir(), 'fleet-bench-report-'));
  const ran = await promisify(execFile)(process.execPath, [RUN, '--quick', '--systems', systems.join(','), '--out', out], { maxBuffer: 10 * 1024 * 1024 });
  stderr = ran.stderr;
  const files = await readdir(out);
  const json = files.filter((f) => /^bench-[\d-]+\.json$/.test(f));
  const md = files.filter((f) => /^bench-[\d-]+\.md$/.test(f));
  assert.equal(json.length, 1, `one JSON report in ${files.join(', ')}`);
  assert.equal(md.length, 1, `one Markdown report in ${files.join(', ')}`);
  report = JSON.parse(await readFile(path.join(out, json[0]!), 'utf8')) as Report;
  markdown = await readFile(path.join(out, md[0]!), 'utf8');
});

after(async () => {
  await rm(out, { recursive: true, force: true });
});

const finitePositive = (value: unknown, what: string) => {
  assert.equal(typeof value, 'number', `${what} is a number`);
  assert.ok(Number.isFinite(value) && (value as number) > 0, `${what} is finite and positive, got ${value}`);
};

describe('npm run bench --quick', () => {
  test('says what it is doing on stderr', () => {
    assert.match(stderr, /round 1\/1/);
    assert.match(stderr, /report: /);
  });

  test('names the machine and the date', () => {
    assert.ok(!Number.isNaN(Date.parse(report.date)));
    assert.ok(report.machine.cpu.length > 0);
    finitePositive(report.machine.cores, 'cores');
    finitePositive(report.machine.memoryGiB, 'memory');
    assert.match(report.machine.node, /^v\d+/);
    assert.match(report.machine.kernel, /\S/);
  });

  test('every system has every figure, each a finite positive number, in every round and as the median', () => {
    const common: (keyof Figures)[] = [
      'cpuMsPerFullConnect',
      'cpuMsPerResumedConnect',
      'connectsPerSecond',
      'cpuUsPerQos0Publish',
      'cpuUsPerQos1Publish',
    ];
    const fleetOnly: (keyof Figures)[] = ['revocationP50Ms', 'revocationP95Ms', 'revocationP99Ms', 'enrollmentsPerSecond'];
    assert.deepEqual(Object.keys(report.systems).sort(), [...systems].sort());
    for (const [name, result] of Object.entries(report.systems)) {
      const keys = name === 'fleet-auth' ? [...common, ...fleetOnly] : common;
      for (const figures of [result!.median, ...result!.rounds.map((r) => r.figures)]) {
        for (const key of keys) finitePositive(figures[key], `${name} ${key}`);
        // Twenty held connections move RSS by a few pages, either way: only its being a number is checked.
        assert.ok(Number.isFinite(figures.rssKiBPerHeldConnection), `${name} RSS per held connection`);
      }
      for (const { observations } of result!.rounds) {
        assert.equal(observations.failedConnects, 0, `${name}: ${observations.firstFailure}`);
        assert.equal(observations.held, report.options.devices);
      }
    }
  });

  test('gives fleet-auth’s ratios to every other system and marks each target', () => {
    for (const other of systems.filter((s) => s !== 'fleet-auth')) {
      const ratios = report.ratios[other as keyof Report['ratios']];
      assert.ok(ratios, `ratios to ${other}`);
      for (const key of ['cpuMsPerFullConnect', 'cpuMsPerResumedConnect', 'connectsPerSecond', 'cpuUsPerQos1Publish'] as const) {
        finitePositive(ratios[key], `fleet-auth / ${other} ${key}`);
      }
    }
    assert.equal(report.targets.length, 6);
    for (const target of report.targets) {
      const compared = /Mosquitto/.test(target.target) ? systems.includes('mosquitto') : true;
      assert.equal(typeof target.met, compared ? 'boolean' : 'object', `${target.target}: ${target.measured}`);
    }
  });

  test('writes Markdown whose tables are whole: the figures, then the targets', () => {
    assert.match(markdown, /^# fleet-auth broker benchmark, /);
    assert.match(markdown, /^Machine: .+ cores, .+ Node v\d+/m);
    const tables = markdown
      .split(/\n\n+/)
      .filter((block) => block.startsWith('|'))
      .map((block) => block.split('\n'));
    assert.equal(tables.length, 2);
    for (const rows of tables) {
      const columns = rows[0]!.split('|').length;
      assert.match(rows[1]!, /^\| (--- \| )*--- \|$/);
      for (const row of rows) assert.equal(row.split('|').length, columns, row);
    }
    const [figures, targets] = tables as [string[], string[]];
    assert.equal(figures.length, 2 + 10, 'a row for each of the ten figures');
    assert.match(figures[0]!, /fleet-auth \/ floor/);
    assert.equal(targets.length, 2 + 6);
    for (const row of targets.slice(2)) assert.match(row, /\| (met|missed|not measured) \|$/);
  });
});
