import { z } from '@hono/zod-openapi';

/** The problem document (core/http/problem.ts) as OpenAPI describes it, for every part that serves routes. */
export const Problem = z
  .object({
    type: z.string(),
    title: z.string(),
    status: z.number().int(),
    detail: z.string(),
    code: z.string(),
    instance: z.string(),
  })
  .openapi('Problem');

export const problemResponses = (...statuses: number[]) =>
  Object.fromEntries(
    statuses.map((status) => [status, { description: 'problem', content: { 'application/problem+json': { schema: Problem } } }]),
  );
