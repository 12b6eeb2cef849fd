import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { eventually } from './wait.js';

export interface SseMessage {
  id: string | undefined;
  event: string | undefined;
  data: any;
}

export interface SseStream {
  /** The HTTP status and headers, once curl has printed them. */
  head(): Promise<{ status: number; headers: Record<string, string> }>;
  /** Every message received so far, in order. */
  readonly messages: SseMessage[];
  /** Comment lines received so far (heartbeats). */
  readonly comments: string[];
  /** Waits until a received message satisfies `match`, and returns it. */
  next(match: (m: SseMessage) => boolean, what: string): Promise<SseMessage>;
  /** Resolves with curl's exit code when the stream ends (the server closed it, or close()). */
  readonly exited: Promise<number>;
  /** Stops reading, as a client going away. */
  close(): Promise<void>;
}

/**
 * A Server-Sent Events stream read as an operator's terminal reads it: `curl -N`, printing headers
 * (-i) then the stream as it arrives. Parsed per the SSE format: id, event and data fields, blank line
 * between messages, lines starting with ':' are comments.
 */
export function curlStream(url: string, o: { caFile: string; headers?: Record<string, string> }): SseStream {
  const args = ['-sS', '-N', '-i', '--cacert', o.caFile];
  for (const [name, value] of Object.entries(o.headers ?? {})) args.push('-H', `${name}: ${value}`);
  const child = spawn('curl', [...args, url], { stdio: ['ignore', 'pipe', 'pipe'] });
  const messages: SseMessage[] = [];
  const comments: string[] = [];
  let head: { status: number; headers: Record<string, string> } | undefined;
  let buffer = '';
  const exited = once(child, 'exit').then(([code]) => (code as number | null) ?? -1);

  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    buffer += chunk;
    if (!head) {
      const end = buffer.indexOf('\r\n\r\n');
      if (end < 0) return;
      const [statusLine, ...lines] = buffer.slice(0, end).split('\r\n');
      const headers: Record<string, string> = {};
      for (const line of lines) {
        const colon = line.indexOf(':');
        headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
      }
      head = { status: Number(statusLine!.split(' ')[1]), headers };
      buffer = buffer.slice(end + 4);
    }
    for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const message: SseMessage = { id: undefined, event: undefined, data: undefined };
      let data: string | undefined;
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) comments.push(line.slice(1).trim());
        else if (line.startsWith('id: ')) message.id = line.slice(4);
        else if (line.startsWith('event: ')) message.event = line.slice(7);
        else if (line.startsWith('data: ')) data = (data === undefined ? '' : data + '\n') + line.slice(6);
      }
      if (data !== undefined) {
        message.data = JSON.parse(data);
        messages.push(message);
      }
    }
  });

  return {
    async head() {
      await eventually(() => head !== undefined || child.exitCode !== null, 'curl printed the response headers');
      if (!head) throw new Error(`curl ended without a response: exit ${child.exitCode}`);
      return head;
    },
    messages,
    comments,
    async next(match, what) {
      let found: SseMessage | undefined;
      await eventually(() => (found = messages.find(match)) !== undefined, what);
      return found!;
    },
    exited,
    async close() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}
