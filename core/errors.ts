/**
 * A refusal with a stable code. The code is what clients and tests match on; the message says what
 * went wrong and, where there is one, what to do next. HTTP maps it to application/problem+json.
 */
export class FleetError extends Error {
  override name = 'FleetError';
  constructor(
    readonly code: string,
    readonly status: number,
    message: string,
    readonly extra: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

/**
 * A refused credential (401). `reason` says which check failed, from a closed set, for the log line
 * and the metric; the client sees only the code and message.
 */
export class AuthenticationError extends FleetError {
  constructor(
    readonly reason: string,
    code: string,
    message: string,
  ) {
    super(code, 401, message);
  }
}

/** What a file system error means, in words an operator acts on (not "ENOENT"). */
export function fileProblem(error: unknown): string {
  const code = (error as NodeJS.ErrnoException)?.code;
  const reasons: Record<string, string> = {
    ENOENT: 'no such file or directory',
    EACCES: 'permission denied',
    EPERM: 'operation not permitted',
    EISDIR: 'is a directory, not a file',
    ENOTDIR: 'a part of the path is not a directory',
    EROFS: 'on a read-only file system',
    ENOSPC: 'no space left on the device',
    EEXIST: 'already exists',
  };
  return (code && reasons[code]) ?? (error instanceof Error ? error.message : String(error));
}
