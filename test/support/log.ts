import { createLogger, type Logger } from '../../core/log.js';

export interface LogLine {
  level: number;
  msg: string;
  raw: string;
  [field: string]: unknown;
}

export const WARN = 40;
export const ERROR = 50;

/** A real pino logger whose JSON lines are kept, to check what was said and that no secret was. */
export function capturingLogger(): { log: Logger; lines: () => LogLine[] } {
  const raw: string[] = [];
  const log = createLogger('debug', { write: (line: string) => void raw.push(line) });
  return { log, lines: () => raw.map((line) => ({ ...JSON.parse(line), raw: line })) };
}
