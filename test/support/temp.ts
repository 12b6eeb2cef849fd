import { chmod, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

/**
 * Temporary directories a data directory can live in: the embedded PostgreSQL runs as 'postgres'
 * when the tests run as root, so each must let others pass through (0711; mkdtemp makes 0700).
 * `removeAll` deletes every one made.
 */
export function tempDirs(): { make(prefix: string): Promise<string>; removeAll(): Promise<void> } {
  const made: string[] = [];
  return {
    async make(prefix) {
      const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
      await chmod(dir, 0o711);
      made.push(dir);
      return dir;
    },
    async removeAll() {
      for (const dir of made.splice(0)) await rm(dir, { recursive: true, force: true });
    },
  };
}
