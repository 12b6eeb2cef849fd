import { pino, type DestinationStream, type Logger } from 'pino';

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

export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino({ level, redact: { paths: REDACT, censor: '[redacted]' } }, destination ?? process.stdout);
}

export const silentLogger = (): Logger => pino({ level: 'silent' });

export const stderrDestination = (): DestinationStream => pino.destination(2);
