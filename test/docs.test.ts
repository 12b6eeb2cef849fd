import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { inspectRoutes } from 'hono/dev';
import { policyFromConfig } from '../cli/start.js';
import { silentLogger } from '../core/log.js';
import { Registry } from 'prom-client';
import { apiDeps, createPkiApp, createProvisioningApp, signedObjectRoutes } from '../provisioning/app.js';
import { createApiMetrics } from '../provisioning/metrics.js';
import { startTestFleet, type TestFleet } from './support/fleet.js';

let t: TestFleet;
before(async () => {
  t = await startTestFleet();
});
after(() => t?.close());

/** The src and href attributes of the page: everything a browser would load for it. */
const referencesIn = (html: string): string[] => [...html.matchAll(/\b(?:src|href)="([^"]+)"/g)].map((m) => m[1]!);

describe('API reference at /docs', () => {
  test('is an HTML page that loads Swagger UI only from this server', async () => {
    const res = await t.api('GET', '/docs');
    assert.equal(res.status, 200);
    assert.match(String(res.headers['content-type']), /^text\/html/);
    assert.match(String(res.headers['content-security-policy']), /default-src 'self'/);
    const references = referencesIn(res.text);
    assert.ok(references.includes('/docs/assets/swagger-ui-bundle.js'), res.text);
    assert.ok(references.includes('/docs/assets/swagger-ui.css'), res.text);
    for (const reference of references) assert.match(reference, /^\/docs\/assets\//, `${reference} is served by us, not a CDN`);
    assert.doesNotMatch(res.text, /https?:\/\//, 'no absolute URL: the page works offline');
  });

  test('serves every asset the page references with a JS, CSS or image content type', async () => {
    const expected: Record<string, RegExp> = { js: /^text\/javascript/, css: /^text\/css/, png: /^image\/png/ };
    for (const reference of referencesIn((await t.api('GET', '/docs')).text)) {
      const res = await t.api('GET', reference);
      assert.equal(res.status, 200, reference);
      const extension = reference.split('.').at(-1)!;
      assert.match(String(res.headers['content-type']), expected[extension]!, reference);
      assert.ok(res.body.length > 0, `${reference} is not empty`);
    }
    const bundle = await t.api('GET', '/docs/assets/swagger-ui-bundle.js');
    assert.match(bundle.text, /SwaggerUIBundle/);
    const initializer = await t.api('GET', '/docs/assets/initializer.js');
    assert.match(initializer.text, /url: '\/openapi\.json'/);
    assert.match(initializer.text, /validatorUrl: null/, 'the document is not sent to an online validator');
  });

  test('serves nothing else from the package', async () => {
    for (const pathname of ['/docs/assets/package.json', '/docs/assets/index.html', '/docs/assets/..%2Fpackage.json', '/docs/assets/']) {
      const res = await t.api('GET', pathname);
      assert.equal(res.status, 404, pathname);
      assert.equal(res.headers['content-type'], 'application/problem+json', pathname);
      assert.equal(res.json.code, 'not_found');
    }
  });
});

describe('OpenAPI document at /openapi.json', () => {
  test('lists the enrollment and device routes and declares the operator bearer token they use', async () => {
    const res = await t.api('GET', '/openapi.json');
    assert.equal(res.status, 200);
    const doc = res.json;
    assert.equal(doc.openapi, '3.1.0');
    assert.ok(doc.paths['/v1/enrollments']?.post, 'POST /v1/enrollments');
    assert.ok(doc.paths['/v1/devices']?.post, 'POST /v1/devices');
    assert.ok(doc.paths['/v1/devices/{id}']?.get, 'GET /v1/devices/{id}');
    assert.deepEqual(doc.components?.securitySchemes?.operatorToken, { type: 'http', scheme: 'bearer' });
    assert.deepEqual(doc.paths['/v1/devices'].post.security, [{ operatorToken: [] }]);
    assert.equal(doc.paths['/v1/enrollments'].post.security, undefined, 'enrollment authenticates with its token in the body');
  });
});

/**
 * A Hono route path as OpenAPI writes it, parameter names left out: ":id" and "*" become "{}", and a
 * parameter whose pattern ends in a literal suffix (":keyId{[0-9a-f]+\.crt}") keeps the suffix.
 */
function routeShape(honoPath: string): string {
  return honoPath
    .replace(/:\w+(?:\{((?:[^{}]|\{[^{}]*\})*)\})?/g, (_, pattern: string | undefined) => '{}' + (/\\(\.\w+)$/.exec(pattern ?? '')?.[1] ?? ''))
    .replace(/\*$/, '{}');
}
/** An OpenAPI path template as a pattern: each {parameter} stands for one path segment or part of one. */
const templatePattern = (openApiPath: string) =>
  new RegExp('^' + openApiPath.split(/\{\w+\}/).map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('[^/]+') + '$');

describe('OpenAPI coverage', () => {
  test('every route either listener answers is in /openapi.json, with its method', async () => {
    const deps = apiDeps({
      pool: t.fleet.db.pool,
      ca: t.fleet.ca,
      policy: policyFromConfig(t.config),
      enrollmentTokenTtlMs: t.config.enrollmentTokenTtlMs,
      clock: () => new Date(),
      log: silentLogger(),
      limits: t.config.apiLimits,
      metrics: createApiMetrics(new Registry()),
    });
    const signedObjects = signedObjectRoutes(deps);
    // Middleware (app.use, and per-method guards such as the operator check) calls next(); the rest answer.
    const servedBy = (app: Parameters<typeof inspectRoutes>[0]) => [
      ...new Set(inspectRoutes(app).filter((r) => !r.isMiddleware).map((r) => `${r.method} ${routeShape(r.path)}`)),
    ];
    const served = servedBy(createProvisioningApp(deps, signedObjects));
    // The plain-HTTP PKI listener serves no document of its own: its routes are a part of the API's, described there.
    const servedOverHttp = servedBy(createPkiApp(deps, signedObjects));
    assert.ok(served.length > 25, `found the routes: ${served.join(', ')}`);
    assert.deepEqual(servedOverHttp.filter((route) => !served.includes(route)), [], 'the PKI listener serves only routes the API serves too');
    const doc = (await t.api('GET', '/openapi.json')).json;
    const documented = Object.entries(doc.paths as Record<string, Record<string, unknown>>).flatMap(([p, item]) =>
      Object.keys(item).map((method) => ({ method: method.toUpperCase(), pattern: templatePattern(p) })),
    );
    const isDocumented = (route: string) => {
      const [method, shape] = route.split(' ') as [string, string];
      return documented.some((d) => d.method === method && d.pattern.test(shape));
    };
    assert.deepEqual(served.filter((route) => !isDocumented(route)), [], 'routes missing from the OpenAPI document');
    const expected = [
      'GET /.well-known/est/cacerts',
      'GET /.well-known/est/csrattrs',
      'POST /.well-known/est/simpleenroll',
      'GET /pki/crl',
      'GET /pki/crl/{}',
      'GET /pki/issuers/{}.crt',
      'POST /ocsp',
      'GET /ocsp/{}',
      'GET /healthz/live',
      'GET /healthz/ready',
    ];
    for (const route of expected) assert.ok(served.includes(route) && isDocumented(route), route);
    for (const route of ['GET /pki/crl/{}', 'POST /ocsp', 'GET /ocsp/{}']) assert.ok(servedOverHttp.includes(route), `${route} over plain HTTP`);
  });

  test('every operation is tagged with its part, and every tag is described', async () => {
    const doc = (await t.api('GET', '/openapi.json')).json;
    const described = new Set((doc.tags as { name: string }[]).map((tag) => tag.name));
    const expected: Record<string, string> = {
      '/v1/enrollments': 'enrollment',
      '/v1/renewals': 'enrollment',
      '/v1/devices/{id}': 'devices',
      '/.well-known/est/simpleenroll': 'EST',
      '/pki/crl/{keyId}': 'PKI',
      '/ocsp': 'OCSP',
      '/healthz/live': 'health',
    };
    for (const [p, item] of Object.entries(doc.paths as Record<string, Record<string, { tags?: string[] }>>)) {
      for (const [method, operation] of Object.entries(item)) {
        assert.equal(operation.tags?.length, 1, `${method} ${p} has one tag`);
        assert.ok(described.has(operation.tags![0]!), `${method} ${p}: tag ${operation.tags![0]} is described`);
        if (expected[p]) assert.equal(operation.tags![0], expected[p], `${method} ${p}`);
      }
    }
  });

  test('describes how each non-bearer route authenticates: EST with HTTP Basic, renewal with the client certificate', async () => {
    const doc = (await t.api('GET', '/openapi.json')).json;
    assert.deepEqual(doc.components.securitySchemes.estBasic, {
      type: 'http',
      scheme: 'basic',
      description: doc.components.securitySchemes.estBasic.description,
    });
    assert.equal(doc.components.securitySchemes.deviceCertificate.type, 'mutualTLS');
    assert.deepEqual(doc.paths['/.well-known/est/simpleenroll'].post.security, [{ estBasic: [] }]);
    assert.deepEqual(doc.paths['/.well-known/est/simplereenroll'].post.security, [{ deviceCertificate: [] }]);
    assert.deepEqual(doc.paths['/v1/renewals'].post.security, [{ deviceCertificate: [] }]);
    assert.equal(doc.paths['/pki/crl'].get.security, undefined, 'CRLs are public');
  });
});
