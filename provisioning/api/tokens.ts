import { createRoute, z } from '@hono/zod-openapi';
import { type OperatorVariables, requireOperator } from '../../core/http/operator-auth.js';
import { apiRouter } from '../../core/http/router.js';
import { listOperatorTokens, OPERATOR_ROLES, operatorActor, revokeOperatorToken } from '../../core/registry/index.js';
import type { ApiDeps } from '../deps.js';
import { isoDates, problemResponses } from './schemas.js';

const security = [{ operatorToken: [] }];

/** A token as admins see it. Neither the token nor its hash is ever part of an answer. */
export const OperatorToken = z
  .object({
    id: z.string(),
    name: z.string(),
    role: z.enum(OPERATOR_ROLES),
    createdAt: z.string(),
    createdBy: z.string(),
    expiresAt: z.string().nullable(),
    lastUsedAt: z.string().nullable().openapi({ description: 'updated at most once a minute' }),
    revokedAt: z.string().nullable(),
    revokedBy: z.string().nullable(),
  })
  .openapi('OperatorToken');

const list = createRoute({
  method: 'get',
  path: '/v1/tokens',
  summary: 'Every operator token (admins only): role, expiry, last use, revocation',
  security,
  responses: { 200: { description: 'the tokens', content: { 'application/json': { schema: z.object({ tokens: z.array(OperatorToken) }) } } }, ...problemResponses(401, 403) },
});

const revoke = createRoute({
  method: 'delete',
  path: '/v1/tokens/{id}',
  summary: 'Revoke an operator token (admins only); it is refused from the next request on',
  security,
  request: { params: z.object({ id: z.string().regex(/^[0-9a-f]{12}$/, 'a token id as fleet token list shows it') }) },
  responses: { 200: { description: 'revoked (or already revoked)', content: { 'application/json': { schema: OperatorToken } } }, ...problemResponses(400, 401, 403, 404) },
});

export function tokenRoutes(deps: ApiDeps) {
  const app = apiRouter<{ Variables: OperatorVariables }>();
  app.use('/v1/tokens/*', requireOperator(deps, 'tokens'));
  app.openapi(list, async (c) => c.json({ tokens: (await listOperatorTokens(deps.pool)).map(isoDates) }, 200));
  app.openapi(revoke, async (c) => {
    const { id } = c.req.valid('param');
    const revoked = await revokeOperatorToken(deps.pool, { id, actor: operatorActor(c.get('operator')), now: deps.clock() });
    deps.log.info({ tokenId: id, by: operatorActor(c.get('operator')) }, 'operator token revoked');
    return c.json(isoDates(revoked), 200);
  });
  return app;
}
