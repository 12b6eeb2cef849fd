import { createRoute, z } from '@hono/zod-openapi';
import { FleetError } from '../core/errors.js';
import { type OperatorVariables, requireOperator } from '../core/http/operator-auth.js';
import { problemResponses } from '../core/http/schemas.js';
import { apiRouter } from '../core/http/router.js';
import {
  DEVICE_EVENT_KINDS,
  DEVICE_ID_PATTERN,
  DEVICE_ID_RULE,
  type DeviceEvent,
  type DeviceEventKind,
  eventsOfDevice,
  getDevice,
} from '../core/registry/index.js';
import { type Repeating, repeatEvery } from '../core/scheduler.js';
import type { DashboardDeps } from './deps.js';

/** A comment line this often keeps proxies and clients from closing an idle stream. */
const HEARTBEAT_MS = 15_000;
/** Messages queued for one slow stream before it is closed; its client resumes with Last-Event-ID. */
const MAX_QUEUED = 10_000;

const security = [{ operatorToken: [] }];
const DeviceId = z.string().regex(DEVICE_ID_PATTERN, DEVICE_ID_RULE).openapi({ example: 'sensor-0001' });
const EventId = z.string().regex(/^\d{1,15}$/, 'an event id: a whole number');
const Kinds = z
  .string()
  .refine((text) => text.split(',').every((k) => (DEVICE_EVENT_KINDS as readonly string[]).includes(k)), `a comma-separated list of: ${DEVICE_EVENT_KINDS.join(', ')}`)
  .openapi({ example: 'connected,disconnected' });

const Event = z
  .object({
    id: z.number().int(),
    at: z.string(),
    kind: z.enum(DEVICE_EVENT_KINDS),
    deviceId: z.string().nullable(),
    serial: z.string().nullable(),
    address: z.string().nullable(),
    reason: z.string().nullable().openapi({ description: 'why: the refusal, disconnect or revocation reason; for ca_changed, rotated, imported or retired' }),
    details: z.record(z.string(), z.unknown()),
  })
  .openapi('DeviceEvent');

const deviceEvents = createRoute({
  method: 'get',
  path: '/v1/devices/{id}/events',
  summary: "A device's events, newest first: connects, disconnects and refusals with their reason and address, enrollments, renewals, revocations",
  security,
  request: {
    params: z.object({ id: DeviceId }),
    query: z.object({
      limit: z.coerce.number().int().min(1).max(200).default(50),
      cursor: z.string().max(32).optional().openapi({ description: 'nextCursor of the page before' }),
    }),
  },
  responses: {
    200: {
      description: 'one page of events',
      content: { 'application/json': { schema: z.object({ events: z.array(Event), nextCursor: z.string().nullable() }) } },
    },
    ...problemResponses(400, 401, 403, 404),
  },
});

const stream = createRoute({
  method: 'get',
  path: '/v1/events',
  summary: 'Every device event as it is written, as Server-Sent Events; resumes after Last-Event-ID',
  description:
    'Each message is `id: <event id>`, `event: <kind>` and `data: <DeviceEvent JSON>`. Without Last-Event-ID (or `after`) the stream ' +
    'starts with the next event; with it, the events written after that id come first, each once. A comment line is sent every 15 s.',
  security,
  request: {
    headers: z.object({ 'last-event-id': EventId.optional().openapi({ description: 'resume after this event (EventSource sends it on reconnect)' }) }),
    query: z.object({
      device: DeviceId.optional().openapi({ description: "only this device's events" }),
      kinds: Kinds.optional(),
      after: EventId.optional().openapi({ description: 'resume after this event; Last-Event-ID wins when both are sent' }),
    }),
  },
  responses: {
    200: { description: 'the stream', content: { 'text/event-stream': { schema: z.string() } } },
    ...problemResponses(400, 401, 403, 503),
  },
});

export const eventJson = (e: DeviceEvent) => ({ ...e, at: e.at.toISOString() });

const cursorOf = (id: number) => Buffer.from(String(id)).toString('base64url');

function beforeIdOf(cursor: string | undefined): number | undefined {
  if (cursor === undefined) return undefined;
  const text = Buffer.from(cursor, 'base64url').toString('utf8');
  if (!/^[1-9]\d{0,14}$/.test(text) || cursorOf(Number(text)) !== cursor) {
    throw new FleetError('validation_failed', 400, 'cursor: not a cursor this API gave out; start again without one');
  }
  return Number(text);
}

/** One SSE message: the id resumes, the event name is the kind, the data one line of JSON. */
const message = (e: DeviceEvent) => `id: ${e.id}\nevent: ${e.kind}\ndata: ${JSON.stringify(eventJson(e))}\n\n`;

export function eventRoutes(deps: DashboardDeps) {
  const app = apiRouter<{ Variables: OperatorVariables }>();
  app.on('GET', ['/v1/events', '/v1/devices/:id/events'], requireOperator(deps, 'read'));
  const streams = streamRegistry(deps);

  app.openapi(deviceEvents, async (c) => {
    const { id } = c.req.valid('param');
    const { limit, cursor } = c.req.valid('query');
    const beforeId = beforeIdOf(cursor);
    if (!(await getDevice(deps.pool, id))) throw new FleetError('device_not_found', 404, `no device ${id} is registered`);
    const page = await eventsOfDevice(deps.pool, id, { beforeId, limit: limit + 1 });
    const events = page.slice(0, limit);
    const nextCursor = page.length > limit ? cursorOf(events.at(-1)!.id) : null;
    return c.json({ events: events.map(eventJson), nextCursor }, 200);
  });

  app.openapi(stream, (c) => {
    const query = c.req.valid('query');
    const resumeFrom = c.req.valid('header')['last-event-id'] ?? query.after;
    const response = streams.open({
      after: resumeFrom === undefined ? 'now' : Number(resumeFrom),
      filter: { deviceId: query.device, kinds: query.kinds?.split(',') as DeviceEventKind[] | undefined },
    });
    return response as never;
  });
  return app;
}

/** The open streams of this process: capped, with one heartbeat timer for all of them while any is open. */
function streamRegistry(deps: DashboardDeps) {
  const open = new Set<{ comment(text: string): void }>();
  let heartbeat: Repeating | undefined;
  const encoder = new TextEncoder();

  return {
    open(from: { after: number | 'now'; filter: { deviceId?: string; kinds?: DeviceEventKind[] } }): Response {
      if (open.size >= deps.maxEventStreams) {
        throw new FleetError('too_many_streams', 503, `this server already serves ${open.size} event streams, its most (FLEET_EVENT_STREAMS_MAX); try again later`, {
          retryAfter: 30,
        });
      }
      let controller!: ReadableStreamDefaultController<Uint8Array>;
      let finished = false;
      let room: (() => void) | undefined;
      let subscription: { cancel(): void } | undefined;

      const finish = () => {
        if (finished) return;
        finished = true;
        subscription?.cancel();
        open.delete(handle);
        if (open.size === 0) {
          heartbeat?.stop();
          heartbeat = undefined;
        }
        room?.();
        try {
          controller.close();
        } catch {
          // Already closed by the client going away.
        }
      };
      const send = (text: string) => {
        if (finished) return;
        // A client that reads slower than events come is closed, not buffered for without end.
        if ((controller.desiredSize ?? 0) < -MAX_QUEUED) return finish();
        controller.enqueue(encoder.encode(text));
      };
      const handle = { comment: (text: string) => send(`: ${text}\n\n`) };

      const body = new ReadableStream<Uint8Array>({
        start: (c) => void (controller = c),
        // The reader wants more: a catch-up waiting for room goes on.
        pull: () => {
          room?.();
          room = undefined;
        },
        // The client went away.
        cancel: () => finish(),
      });
      open.add(handle);
      heartbeat ??= repeatEvery(deps.scheduler, HEARTBEAT_MS, () => {
        for (const s of open) s.comment('heartbeat');
      });
      // Sent at once, so the client sees the stream open before the first event.
      send('retry: 2000\n: connected\n\n');
      subscription = deps.events.subscribe({
        after: from.after,
        filter: from.filter,
        async deliver(event) {
          send(message(event));
          // While catching up, the feed waits here until the client has read what is queued.
          if (!finished && (controller.desiredSize ?? 0) <= 0) await new Promise<void>((resolve) => (room = resolve));
        },
        ended: finish,
      });
      return new Response(body, {
        status: 200,
        headers: { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no' },
      });
    },
  };
}
