import { OpenAPIHono } from '@hono/zod-openapi';
import type { Env } from 'hono';
import { FleetError } from '../errors.js';
import { problemResponse } from './problem.js';

/** An OpenAPI router whose request validation failures come out as validation_failed problems. */
export function apiRouter<E extends Env = Env>() {
  return new OpenAPIHono<E>({
    defaultHook: (result, c) => {
      if (result.success) return;
      const issues = result.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message }));
      const detail = issues.map((i) => (i.path ? `${i.path}: ${i.message}` : i.message)).join('; ');
      return problemResponse(c, new FleetError('validation_failed', 400, detail, { issues }));
    },
  });
}
