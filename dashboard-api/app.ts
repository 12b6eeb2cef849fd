import type { OpenAPIHono } from '@hono/zod-openapi';
import { auditLogRoutes } from './audit-log.js';
import { certificateReportRoutes } from './certificates.js';
import { auditRoutes } from './audits.js';
import { consoleRoutes } from './console.js';
import type { DashboardDeps } from './deps.js';
import { eventRoutes } from './events.js';
import { deviceListRoutes } from './devices.js';
import { summaryRoutes } from './summary.js';

/**
 * The operators' view, served on the API's HTTPS listener: read-mostly routes for the fleet summary,
 * device lists, events, audits and the audit log, and the ops console. Every route is in the
 * OpenAPI document.
 */
export function dashboardRoutes(deps: DashboardDeps): OpenAPIHono<any>[] {
  return [
    summaryRoutes(deps),
    eventRoutes(deps),
    deviceListRoutes(deps),
    certificateReportRoutes(deps),
    auditLogRoutes(deps),
    auditRoutes(deps),
    consoleRoutes(deps),
  ];
}
