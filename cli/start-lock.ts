import { readFileSync, unlinkSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { FleetConfig } from '../core/config.js';
import { ensureDataDir } from '../core/db/database.js';
import { isAlive } from '../core/db/embedded.js';
import { FleetError } from '../core/errors.js';

/**
 * `fleet start` owns the embedded database of its data directory: a second one would join it and
 * lose it when the first stops (and then fail on a port in use, naming the wrong cause). So each
 * start holds `<data dir>/fleet-start.pid` while it runs; a second start finding a live pid there is
 * refused in one line. Commands and tests that open the database beside a start hold no such file.
 */
export async function holdDataDir(config: FleetConfig): Promise<void> {
  if (config.databaseUrl !== undefined) return;
  await ensureDataDir(config.dataDir);
  const file = path.join(config.dataDir, 'fleet-start.pid');
  const holder = await readFile(file, 'utf8').then((text) => Number.parseInt(text, 10), () => undefined);
  if (holder !== undefined && holder !== process.pid && isAlive(holder)) {
    throw new FleetError(
      'data_dir_in_use',
      1,
      `another fleet start (pid ${holder}) runs on ${config.dataDir} and owns its embedded database; stop that one first, or give this one another FLEET_DATA_DIR`,
    );
  }
  await writeFile(file, `${process.pid}\n`, { mode: 0o644 });
  process.on('exit', () => {
    // Only our own: a later start may have taken the file over after a crash of ours.
    if (readFileSync(file, 'utf8').trim() === String(process.pid)) unlinkSync(file);
  });
}
