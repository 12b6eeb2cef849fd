import { pino, type DestinationStream, type Logger } from 'pino';
import pinoPretty from 'pino-pretty';

export type { Logger };

/** Paths that could carry a secret are redacted even if someone logs a whole request or token record. */
const REDACT = [
  'token',
  'enrollmentToken',
  'password',
  'privateKey',
  'key',
  'passphrase',
  'caPassphrase',
  'pin',
  '*.token',
  '*.enrollmentToken',
  '*.password',
  '*.privateKey',
  '*.passphrase',
  '*.caPassphrase',
  '*.pin',
  'req.headers.authorization',
];

export const LOG_FORMATS = ['json', 'pretty'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino({ level, redact: { paths: REDACT, censor: '[redacted]' } }, destination ?? process.stdout);
}

/**
 * Logs on stdout (1) or stderr (2): one line of JSON per entry for a collector, or, on a terminal,
 * lines a person reads (local time, level names, the fields after the message). `format` (from
 * FLEET_LOG_FORMAT) decides when set; unset, a terminal gets pretty and anything else JSON. Redaction
 * happens before either format, so both hide the same secrets.
 */
export function logTo(fd: 1 | 2, level: string, format: LogFormat | undefined = logFormatFromEnv()): Logger {
  const stream = fd === 1 ? process.stdout : process.stderr;
  const pretty = format === undefined ? stream.isTTY === true : format === 'pretty';
  if (!pretty) return createLogger(level, pino.destination({ fd, sync: true }));
  return createLogger(
    level,
    pinoPretty({
      destination: fd,
      sync: true,
      colorize: stream.isTTY === true,
      translateTime: 'SYS:yyyy-mm-dd HH:MM:ss.l',
      ignore: 'pid,hostname',
      singleLine: true,
    }),
  );
}

/** FLEET_LOG_FORMAT as commands read it; `fleet start` validates it with the rest of the configuration. */
function logFormatFromEnv(): LogFormat | undefined {
  const value = process.env.FLEET_LOG_FORMAT;
  return (LOG_FORMATS as readonly string[]).includes(value ?? '') ? (value as LogFormat) : undefined;
}

export const silentLogger = (): Logger => pino({ level: 'silent' });
