import type { OpenAPIHono } from '@hono/zod-openapi';
import { consoleRoutes } from './console.js';
import type { DashboardDeps } from './deps.js';

/**
 * The operators' view, served on the API's HTTPS listener: read-mostly routes for the fleet summary,
 * device lists, events, audits and the audit log, and the ops console. Every route is in the
 * OpenAPI document.
 */
export function dashboardRoutes(deps: DashboardDeps): OpenAPIHono<any>[] {
  return [consoleRoutes(deps)];
}
