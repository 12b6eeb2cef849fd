/**
 * The Redis the broker workers share in the benchmark: whether it answers, and emptying the run's
 * own database number before each start, so no subscription or retained message of an earlier
 * start is counted. Spoken in RESP over a plain socket: two commands do not call for a client library.
 */
import net from 'node:net';

/** A database number of the benchmark's own; pub/sub ignores it, so device ids carry a run tag too. */
export const BENCH_REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379/14';

const ANSWER_MS = 2_000;

const command = (...parts: string[]) => `*${parts.length}\r\n${parts.map((p) => `$${Buffer.byteLength(p)}\r\n${p}\r\n`).join('')}`;

/** Sends `commands` and resolves with the replies' first lines; rejects on an error reply, a refusal or silence. */
function ask(url: URL, commands: string[][]): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(url.port || 6379), url.hostname);
    let seen = '';
    const done = (error?: Error) => {
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve(seen.trim().split('\r\n'));
    };
    const timer = setTimeout(() => done(new Error(`no answer from ${url.host} in ${ANSWER_MS} ms`)), ANSWER_MS);
    socket.on('error', (error) => done(error));
    socket.on('connect', () => socket.write(commands.map((c) => command(...c)).join('')));
    socket.on('data', (chunk: Buffer) => {
      seen += chunk.toString('utf8');
      const lines = seen.trim().split('\r\n');
      const failed = lines.find((line) => line.startsWith('-'));
      if (failed) done(new Error(`Redis at ${url.host} answered ${failed.slice(1)}`));
      else if (seen.endsWith('\r\n') && lines.length >= commands.length) done();
    });
  });
}

/** Empties the database `url` names (FLUSHDB on that number only, never the server). */
export async function emptyRedisDatabase(url: string): Promise<void> {
  const parsed = new URL(url);
  const db = parsed.pathname.replace(/^\//, '') || '0';
  const auth = parsed.password ? [parsed.username ? ['AUTH', decodeURIComponent(parsed.username), decodeURIComponent(parsed.password)] : ['AUTH', decodeURIComponent(parsed.password)]] : [];
  await ask(parsed, [...auth, ['SELECT', db], ['FLUSHDB']]);
}

/** Why Redis cannot serve the run, or undefined when it answers (and its database was emptied). */
export async function redisUnavailable(url: string): Promise<string | undefined> {
  try {
    await emptyRedisDatabase(url);
    return undefined;
  } catch (error) {
    return (error as Error).message;
  }
}
