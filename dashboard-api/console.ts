import { createHash } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { createRoute, z } from '@hono/zod-openapi';
import type { Context } from 'hono';
import { deleteCookie, getCookie, setCookie } from 'hono/cookie';
import {
  operatorOfToken,
  type OperatorVariables,
  requireCsrfToken,
  requireOperator,
  requireSameOrigin,
  SESSION_COOKIE,
} from '../core/http/operator-auth.js';
import { problemResponses } from '../core/http/schemas.js';
import { apiRouter } from '../core/http/router.js';
import { projectRoot } from '../core/paths.js';
import { closeOperatorSession, OPERATOR_ROLES, openOperatorSession } from '../core/registry/index.js';
import type { DashboardDeps } from './deps.js';

/**
 * The ops console: a single page of plain ES modules, read from dashboard-api/console/ in the
 * repository (so `dist/` serves the same files), and the login that trades an operator token for an
 * HttpOnly session cookie. No CDN and no build step: it works where the API runs, offline too.
 */
export const CONSOLE_PATH = '/console';
const ASSETS_PATH = `${CONSOLE_PATH}/assets`;
const consoleDir = path.join(projectRoot, 'dashboard-api', 'console');

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
};

/** Scripts, styles and API calls from this origin only; no inline script or style, no framing. */
const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

const PAGE_HEADERS = {
  'content-security-policy': CONTENT_SECURITY_POLICY,
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
};

/**
 * The files the console may serve: fixed when the server starts, so no request path ever reaches
 * the file system. Names are plain (no folders, no dots but the extension's).
 */
function consoleFiles(): Set<string> {
  return new Set(readdirSync(consoleDir).filter((f) => /^[a-z0-9-]+\.(?:html|js|css|svg)$/.test(f) && f !== 'index.html'));
}

const tags = ['console'];
const json = <T extends z.ZodType>(schema: T) => ({ content: { 'application/json': { schema } } });

const login = createRoute({
  method: 'post',
  path: `${CONSOLE_PATH}/login`,
  tags,
  summary: 'Log in to the ops console with an operator token; answers with the session cookie',
  request: { body: { required: true, ...json(z.object({ token: z.string().min(1).max(256).openapi({ description: 'an operator token (fleet token create)' }) })) } },
  responses: {
    204: { description: 'logged in: Set-Cookie __Host-fleet_session (HttpOnly, Secure, SameSite=Strict)' },
    ...problemResponses(400, 401, 403, 429),
  },
});

const logout = createRoute({
  method: 'post',
  path: `${CONSOLE_PATH}/logout`,
  tags,
  summary: 'End the console session (needs X-CSRF-Token)',
  responses: { 204: { description: 'logged out; the cookie is cleared' }, ...problemResponses(403) },
});

const session = createRoute({
  method: 'get',
  path: '/v1/session',
  tags,
  summary: 'Who is calling, and the CSRF token the console sends with every change',
  security: [{ operatorToken: [] }],
  responses: {
    200: {
      description: 'the operator; csrfToken is null for a bearer token, which needs none',
      ...json(z.object({ operator: z.object({ id: z.string(), name: z.string(), role: z.enum(OPERATOR_ROLES) }), csrfToken: z.string().nullable() })),
    },
    ...problemResponses(401),
  },
});

/** An ETag from the content: the files change only with the repository, and a reload revalidates. */
async function staticFile(c: Context, name: string): Promise<Response> {
  const content = await readFile(path.join(consoleDir, name));
  const etag = `"${createHash('sha256').update(content).digest('base64url').slice(0, 22)}"`;
  const headers = { ...PAGE_HEADERS, 'cache-control': 'no-cache', etag, 'content-type': CONTENT_TYPES[path.extname(name)]! };
  if (c.req.header('if-none-match') === etag) return c.body(null, 304, headers);
  return c.body(new Uint8Array(content), 200, headers);
}

export function consoleRoutes(deps: DashboardDeps) {
  const app = apiRouter<{ Variables: OperatorVariables }>();
  const files = consoleFiles();

  app.get('/', (c) => c.redirect(CONSOLE_PATH, 302));
  app.get(CONSOLE_PATH, (c) => staticFile(c, 'index.html'));
  app.get(`${ASSETS_PATH}/:file`, (c) => {
    const file = c.req.param('file');
    return files.has(file) ? staticFile(c, file) : c.notFound();
  });

  app.openapi(login, async (c) => {
    requireSameOrigin(c);
    const operator = await operatorOfToken(deps, c.req.valid('json').token);
    const opened = await openOperatorSession(deps.pool, { operator, now: deps.clock() });
    setCookie(c, SESSION_COOKIE, opened.sessionId, {
      path: '/',
      secure: true,
      httpOnly: true,
      sameSite: 'Strict',
      maxAge: Math.floor((opened.expiresAt.getTime() - deps.clock().getTime()) / 1000),
    });
    deps.log.info({ operator: operator.id, name: operator.name, role: operator.role }, 'console session opened');
    return c.body(null, 204, { 'cache-control': 'no-store' });
  });

  app.openapi(logout, async (c) => {
    const sessionId = getCookie(c, SESSION_COOKIE);
    if (sessionId !== undefined) {
      requireCsrfToken(c, sessionId);
      await closeOperatorSession(deps.pool, sessionId, deps.clock());
    }
    deleteCookie(c, SESSION_COOKIE, { path: '/', secure: true, httpOnly: true, sameSite: 'Strict' });
    return c.body(null, 204, { 'cache-control': 'no-store' });
  });

  app.use('/v1/session', requireOperator(deps, 'read'));
  app.openapi(session, (c) => {
    c.header('cache-control', 'no-store');
    return c.json({ operator: c.get('operator'), csrfToken: c.get('consoleSession')?.csrfToken ?? null }, 200);
  });

  const registry = app.openAPIRegistry;
  const page = (p: string, summary: string, type: string) =>
    registry.registerPath({ method: 'get', path: p, tags, summary, responses: { 200: { description: summary, content: { [type]: { schema: z.string() } } } } });
  registry.registerPath({ method: 'get', path: '/', tags, summary: 'Redirects to the ops console', responses: { 302: { description: 'to /console' } } });
  page(CONSOLE_PATH, 'The ops console (a single page; log in with an operator token)', 'text/html');
  registry.registerPath({
    method: 'get',
    path: `${ASSETS_PATH}/{file}`,
    tags,
    summary: "The console's scripts and styles",
    request: { params: z.object({ file: z.string() }) },
    responses: { 200: { description: 'the asset', content: { 'application/octet-stream': { schema: z.string() } } }, ...problemResponses(404) },
  });
  return app;
}
