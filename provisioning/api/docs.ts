import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { Hono } from 'hono';

/**
 * The interactive API reference at /docs: Swagger UI over /openapi.json. Its assets come from the
 * swagger-ui-dist package and are served by this server, so the page works where the API runs even
 * without internet access (factory networks often have none), and no third party sees who reads it.
 */
export const DOCS_PATH = '/docs';
const ASSETS_PATH = `${DOCS_PATH}/assets`;

const swaggerUiDir = path.dirname(createRequire(import.meta.url).resolve('swagger-ui-dist/package.json'));

/** Only these files are served: a fixed list, so no request path ever reaches the file system. */
const PACKAGE_ASSETS: Record<string, string> = {
  'swagger-ui-bundle.js': 'text/javascript; charset=utf-8',
  'swagger-ui.css': 'text/css; charset=utf-8',
  'favicon-32x32.png': 'image/png',
};

// validatorUrl null: Swagger UI otherwise sends the document to an online validator.
const INITIALIZER = `window.ui = SwaggerUIBundle({
  url: '/openapi.json',
  dom_id: '#swagger-ui',
  deepLinking: true,
  validatorUrl: null,
});
`;

const PAGE = `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>fleet-auth provisioning API</title>
  <link rel="icon" type="image/png" href="${ASSETS_PATH}/favicon-32x32.png">
  <link rel="stylesheet" href="${ASSETS_PATH}/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="${ASSETS_PATH}/swagger-ui-bundle.js"></script>
  <script src="${ASSETS_PATH}/initializer.js"></script>
</body>
</html>
`;

/** Everything from this origin; Swagger UI sets inline styles and uses data: images, nothing else. */
const CONTENT_SECURITY_POLICY =
  "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; object-src 'none'; frame-ancestors 'none'";

const ONE_HOUR = 'public, max-age=3600';

export function docsRoutes() {
  const app = new Hono();
  const cache = new Map<string, Promise<Buffer>>();
  // Read on first request and kept: the bundle is about 1.5 MB and most processes never serve it.
  const packageAsset = (name: string) => {
    if (!cache.has(name)) cache.set(name, readFile(path.join(swaggerUiDir, name)));
    return cache.get(name)!;
  };

  app.get(DOCS_PATH, (c) => c.html(PAGE, 200, { 'content-security-policy': CONTENT_SECURITY_POLICY }));
  app.get(`${ASSETS_PATH}/initializer.js`, (c) =>
    c.body(INITIALIZER, 200, { 'content-type': 'text/javascript; charset=utf-8', 'cache-control': ONE_HOUR }),
  );
  app.get(`${ASSETS_PATH}/:file`, async (c) => {
    const file = c.req.param('file');
    const type = Object.hasOwn(PACKAGE_ASSETS, file) ? PACKAGE_ASSETS[file] : undefined;
    if (type === undefined) return c.notFound();
    return c.body(new Uint8Array(await packageAsset(file)), 200, { 'content-type': type, 'cache-control': ONE_HOUR });
  });
  return app;
}
