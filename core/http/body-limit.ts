import type { IncomingMessage, ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import type { HttpBindings } from '@hono/node-server';
import type { MiddlewareHandler } from 'hono';
import { FleetError } from '../errors.js';
import { problemResponse } from './problem.js';

const tooLarge = (path: string, maxBytes: number) =>
  new FleetError('body_too_large', 413, `the body of ${path} is limited to ${maxBytes} bytes`);

/** A GET or HEAD carries no body a route may read (a Request cannot even have one); anything sent is left unread. */
/** Whether the request says a body follows, whatever its method. */
export const announcesBody = (incoming: IncomingMessage) =>
  incoming.headers['transfer-encoding'] !== undefined || Number(incoming.headers['content-length'] ?? 0) > 0;

const hasBody = (incoming: IncomingMessage) => incoming.method !== 'GET' && incoming.method !== 'HEAD' && announcesBody(incoming);

/**
 * The request body as a stream that reads nothing until a route pulls it (so authentication, which
 * runs first, costs no body byte) and fails as soon as more than `maxBytes` have arrived: the limit
 * holds while streaming, and nothing beyond one socket read is ever held to enforce it.
 */
function meteredBody(incoming: IncomingMessage, path: string, maxBytes: number, onExceeded: () => void): ReadableStream<Uint8Array> {
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  let received = 0;
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        reader ??= (Readable.toWeb(incoming) as ReadableStream<Uint8Array>).getReader();
        const { done, value } = await reader.read();
        if (done) return controller.close();
        received += value.byteLength;
        // The rest is left unread; the connection closes after the answer (see below).
        if (received > maxBytes) {
          onExceeded();
          return controller.error(tooLarge(path, maxBytes));
        }
        controller.enqueue(value);
      },
    },
    { highWaterMark: 0 },
  );
}

/**
 * Body limits enforced while the body streams in, never by buffering it first. A declared
 * Content-Length over the limit is refused before anything is read. Whatever a route does with the
 * error (a JSON validator turns it into "malformed"), the answer is 413. A request answered before
 * its body was read in full closes its connection, so an unauthenticated sender is not read further.
 */
export function streamingBodyLimit(limitFor: (path: string) => number): MiddlewareHandler<{ Bindings: HttpBindings }> {
  return async (c, next) => {
    const { incoming } = c.env;
    const maxBytes = limitFor(c.req.path);
    let exceeded = Number(incoming.headers['content-length'] ?? 0) > maxBytes;
    if (!exceeded) {
      if (hasBody(incoming)) {
        const body = meteredBody(incoming, c.req.path, maxBytes, () => (exceeded = true));
        c.req.raw = new Request(c.req.url, { method: c.req.method, headers: c.req.raw.headers, body, duplex: 'half', signal: c.req.raw.signal } as RequestInit);
      }
      await next();
    }
    if (exceeded) {
      c.res = undefined;
      c.res = problemResponse(c, tooLarge(c.req.path, maxBytes));
    }
    if (!incoming.complete) (c.env.outgoing as ServerResponse).shouldKeepAlive = false;
  };
}
