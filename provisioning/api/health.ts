import { createRoute, z } from '@hono/zod-openapi';
import type pg from 'pg';
import { REGISTRY_RETRY_AFTER_SECONDS } from '../../core/db/unavailable.js';
import { FleetError } from '../../core/errors.js';
import { problemResponse } from '../../core/http/problem.js';
import { apiRouter } from '../../core/http/router.js';
import { problemResponses } from './schemas.js';

/** Something else this process runs that must be up for it to serve, such as the broker's listener. */
export type ReadinessCheck = () => boolean | Promise<boolean>;

/** A probe must answer even when a pooled connection hangs on a stalled server. */
const DATABASE_PROBE_TIMEOUT_MS = 2000;

const Checks = z.record(z.string(), z.enum(['ok', 'failing'])).openapi({ example: { database: 'ok', broker: 'ok' } });

const liveRoute = createRoute({
  method: 'get',
  path: '/healthz/live',
  tags: ['health'],
  summary: 'Liveness: the process is up and serving HTTP. Says nothing about the database; restart only when this fails',
  responses: { 200: { description: 'alive', content: { 'application/json': { schema: z.object({ status: z.literal('live') }) } } } },
});

const readiness = (path: string, summary: string) =>
  createRoute({
    method: 'get',
    path,
    tags: ['health'],
    summary,
    responses: {
      200: { description: 'ready', content: { 'application/json': { schema: z.object({ status: z.literal('ready'), checks: Checks }) } } },
      ...problemResponses(503),
    },
  });

const readyRoute = readiness(
  '/healthz/ready',
  'Readiness: the registry database answers and the broker is listening; a 503 (with Retry-After and the failing checks) means send no traffic here for now',
);
const legacyRoute = readiness('/healthz', 'The same as /healthz/ready');

async function databaseAnswers(pool: pg.Pool): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), DATABASE_PROBE_TIMEOUT_MS)));
  const probe = pool.query('SELECT 1').then(
    () => true,
    () => false,
  );
  try {
    return await Promise.race([probe, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function passes(check: ReadinessCheck): Promise<boolean> {
  try {
    return await check();
  } catch {
    return false;
  }
}

/** /healthz/live for "restart me?", /healthz/ready (and /healthz) for "send me traffic?". */
export function healthRoutes(deps: { pool: pg.Pool; readiness?: Record<string, ReadinessCheck> }) {
  const app = apiRouter();
  const checks: Record<string, ReadinessCheck> = { database: () => databaseAnswers(deps.pool), ...deps.readiness };

  app.openapi(liveRoute, (c) => c.json({ status: 'live' as const }, 200));

  const ready = async () => {
    const names = Object.keys(checks);
    const results = await Promise.all(names.map((name) => passes(checks[name]!)));
    return Object.fromEntries(names.map((name, i) => [name, results[i] ? ('ok' as const) : ('failing' as const)]));
  };
  for (const route of [readyRoute, legacyRoute]) {
    app.openapi(route, async (c) => {
      const result = await ready();
      const failing = Object.keys(result).filter((name) => result[name] !== 'ok');
      if (failing.length === 0) return c.json({ status: 'ready' as const, checks: result }, 200);
      return problemResponse(
        c,
        new FleetError('not_ready', 503, `not ready: ${failing.join(', ')} failing`, { checks: result, retryAfter: REGISTRY_RETRY_AFTER_SECONDS }),
      ) as never;
    });
  }
  return app;
}
