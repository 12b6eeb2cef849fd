import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { devicesPerProcess, fileLimits, workerCount } from '../device-sim/processes.js';

/** The simulator spreads devices over enough worker processes that none passes its open-file limit. */
test('a fleet larger than one process may hold is spread over enough worker processes', () => {
  const limits = { soft: 20_000, hard: 20_000 };
  const workers = workerCount(2, 20_000, limits);
  assert.ok(Math.ceil(20_000 / workers) <= devicesPerProcess(limits.hard), `${workers} workers hold 20,000 devices under 20,000 files each`);
  assert.ok(devicesPerProcess(20_000) < 20_000, 'room is left for the process\'s own files');
  assert.equal(workerCount(2, 50_000, { soft: 1024, hard: 1024 }), Math.ceil(50_000 / devicesPerProcess(1024)));
  assert.equal(workerCount(4, 3, limits), 3, 'never more workers than devices');
});

test('the open-file limits are read from /proc, and a missing file gives the common default', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'fleet-limits-'));
  try {
    const file = path.join(dir, 'limits');
    await writeFile(file, 'Limit                     Soft Limit           Hard Limit           Units\nMax open files            4096                 unlimited            files\n');
    assert.deepEqual(fileLimits(file), { soft: 4096, hard: Number.MAX_SAFE_INTEGER });
    assert.deepEqual(fileLimits(path.join(dir, 'missing')), { soft: 1024, hard: 1024 });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
