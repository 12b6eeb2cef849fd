import https from 'node:https';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import { secureContextOptions } from '../core/pki/tls.js';
import { logServerErrors } from '../core/server-errors.js';
import { createProvisioningApp } from './app.js';
import type { ProvisioningDeps } from './deps.js';

export interface RunningApi {
  port: number;
  /** Takes up the CA's current trust bundle for new handshakes, without a restart. */
  reloadTrust(): void;
  close(): Promise<void>;
}

/**
 * The provisioning API over HTTPS. A client certificate is requested but not required at the TLS
 * layer: factories enroll with tokens, devices will renew with their certificate.
 */
export async function startProvisioningApi(
  deps: ProvisioningDeps,
  options: { host?: string; port: number },
): Promise<RunningApi> {
  const app = createProvisioningApp(deps);
  const server = serve({
    fetch: app.fetch,
    port: options.port,
    hostname: options.host,
    createServer: https.createServer,
    serverOptions: { ...secureContextOptions(deps.ca), requestCert: true, rejectUnauthorized: false },
  }) as https.Server;
  if (!server.listening) await once(server, 'listening');
  logServerErrors(server, deps.log, 'provisioning API');
  const port = (server.address() as AddressInfo).port;
  deps.log.info({ port }, 'provisioning API listening (HTTPS)');
  return {
    port,
    reloadTrust: () => server.setSecureContext(secureContextOptions(deps.ca)),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
