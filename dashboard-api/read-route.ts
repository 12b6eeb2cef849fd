import type { RouteConfig, RouteHandler } from '@hono/zod-openapi';
import { type OperatorVariables, requireOperator } from '../core/http/operator-auth.js';
import { apiRouter } from '../core/http/router.js';
import type { DashboardDeps } from './deps.js';

type Env = { Variables: OperatorVariables };

/** A route any operator may read (viewer and up), on a router of its own. */
export function readRoute<R extends RouteConfig>(deps: DashboardDeps, route: R, handler: RouteHandler<R, Env>) {
  const app = apiRouter<Env>();
  app.on('GET', route.path, requireOperator(deps, 'read'));
  app.openapi(route, handler);
  return app;
}
