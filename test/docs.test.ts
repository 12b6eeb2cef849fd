import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
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
