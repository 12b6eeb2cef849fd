#!/usr/bin/env node
// Builds dist/ only when a source is newer than what was compiled from it (or dist/ is missing), and
// says so first: `npm start` then only starts, and a build never runs silently. Plain JavaScript with
// no dependencies, since it runs before anything is compiled (npm ci's prepare, npm start, the fleet bin).
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** The folders tsconfig.json compiles, read from it so this never drifts from the build. */
function sourceFolders() {
  const config = JSON.parse(readFileSync(path.join(root, 'tsconfig.json'), 'utf8'));
  return (config.include ?? []).map((folder) => path.join(root, folder));
}

function* typeScriptFiles(dir) {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const entry of entries) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) yield* typeScriptFiles(full);
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) yield full;
  }
}

const mtime = (file) => {
  try {
    return statSync(file).mtimeMs;
  } catch {
    return undefined;
  }
};

/** The first source whose compiled file is missing or older than it; undefined when dist/ is fresh. */
export function staleSource() {
  for (const folder of sourceFolders()) {
    for (const source of typeScriptFiles(folder)) {
      const compiled = path.join(root, 'dist', path.relative(root, source)).replace(/\.ts$/, '.js');
      const built = mtime(compiled);
      if (built === undefined || built < mtime(source)) return path.relative(root, source);
    }
  }
  return undefined;
}

/** Where the sources are not here (an installed package) there is nothing to build: dist/ is what ships. */
const canBuild = () => existsSync(path.join(root, 'tsconfig.json')) && existsSync(path.join(root, 'node_modules', 'typescript'));

/** Returns true when it built. A failed build exits the process: running old code would mislead. */
export function buildIfStale() {
  if (process.env.FLEET_BUILD === 'never' || !canBuild()) return false;
  const stale = staleSource();
  if (stale === undefined) return false;
  const why = existsSync(path.join(root, 'dist')) ? `sources changed: ${stale}` : 'first build';
  process.stderr.write(`building fleet-auth (${why})…\n`);
  const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');
  const result = spawnSync(process.execPath, [tsc, '-p', path.join(root, 'tsconfig.json')], { cwd: root, stdio: ['ignore', 2, 2] });
  if (result.status !== 0) {
    process.stderr.write('error: the build failed (see above); fix the sources, or run an older build with FLEET_BUILD=never\n');
    process.exit(1);
  }
  return true;
}

/**
 * npm links the bins of dependencies into node_modules/.bin, but not the project's own: without this
 * link the first `npx fleet` in a clone installs the project into npm's cache and runs its prepare
 * script there, silently, for half a minute. With it npx finds the bin at once.
 */
export function linkOwnBin() {
  const bin = path.join(root, 'node_modules', '.bin');
  const target = path.join(root, 'dist', 'cli', 'fleet.js');
  if (!existsSync(path.join(root, 'node_modules')) || !existsSync(target)) return;
  // tsc writes files without the execute bit; a bin needs it (npm sets it only on bins it links).
  chmodSync(target, 0o755);
  const link = path.join(bin, 'fleet');
  try {
    lstatSync(link);
    return;
  } catch {
    // Not there yet.
  }
  mkdirSync(bin, { recursive: true });
  symlinkSync(path.join('..', '..', 'dist', 'cli', 'fleet.js'), link);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  buildIfStale();
  linkOwnBin();
}
