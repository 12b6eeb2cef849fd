import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, test } from 'node:test';
import { CONFIG_VARIABLES } from '../core/config.js';
import { projectRoot } from '../core/paths.js';

/** The README is what a new user follows: its Configuration table and its voice are checked here. */
const readme = await readFile(path.join(projectRoot, 'README.md'), 'utf8');

function section(title: string): string {
  const start = readme.indexOf(`\n## ${title}\n`);
  assert.ok(start >= 0, `the README has a ${title} section`);
  const end = readme.indexOf('\n## ', start + 4);
  return readme.slice(start, end < 0 ? undefined : end);
}

/**
 * Variable names in the table's first column, with the short forms expanded: in
 * "`FLEET_CERT_LIFETIME_MIN` / `_MAX`" the second is FLEET_CERT_LIFETIME_MAX.
 */
function documentedVariables(): Set<string> {
  const names = new Set<string>();
  for (const row of section('Configuration').split('\n').filter((line) => line.startsWith('| `'))) {
    let previous: string | undefined;
    for (const [, name] of row.split('|')[1]!.matchAll(/`([A-Z_][A-Z0-9_]*)`/g)) {
      const full = name!.startsWith('_') && previous ? previous.replace(/_[A-Z0-9]+$/, '') + name : name!;
      names.add(full);
      previous = full;
    }
  }
  return names;
}

describe('README', () => {
  test('the Configuration table names every variable the configuration reads', () => {
    const documented = documentedVariables();
    const missing = CONFIG_VARIABLES.filter((name) => !documented.has(name));
    assert.deepEqual(missing, [], `add these to the README's Configuration table: ${missing.join(', ')}`);
  });

  test('speaks of the project alone: no I, we, our or us outside code', () => {
    const prose = readme.replace(/```[\s\S]*?```/g, '').replace(/`[^`\n]*`/g, '');
    const personal = prose.split('\n').filter((line) => /\b(I|I'm|I've|my|we|We|our|Our|us|Us)\b/.test(line));
    assert.deepEqual(personal, []);
  });
});
