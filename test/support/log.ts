import { createLogger, type Logger } from '../../core/log.js';

/** A real logger whose JSON lines a test can read back. */
export function capturedLog(): { log: Logger; lines: () => Record<string, unknown>[] } {
  const lines: string[] = [];
  const log = createLogger('info', { write: (line: string) => void lines.push(line) });
  return { log, lines: () => lines.map((line) => JSON.parse(line) as Record<string, unknown>) };
}
