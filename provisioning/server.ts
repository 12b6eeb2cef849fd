import http from 'node:http';
import https from 'node:https';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { createAdaptorServer } from '@hono/node-server';
import { limitConnections, serverTimeouts } from '../core/http/server-limits.js';
import { secureContextOptions } from '../core/pki/tls.js';
import { logServerErrors } from '../core/server-errors.js';
import { apiDeps, createPkiApp, createProvisioningApp, type MountedRoutes, signedObjectRoutes } from './app.js';
import type { ProvisioningDeps } from './deps.js';

export interface RunningApi {
  port: number;
  /** The plain-HTTP PKI listener's port, when it runs. */
  pkiHttpPort: number | undefined;
  /** Takes up the CA's current trust bundle for new handshakes, without a restart. */
  reloadTrust(): void;
  close(): Promise<void>;
}

/**
 * The provisioning API over HTTPS. A client certificate is requested but not required at the TLS
 * layer: factories enroll with tokens, devices will renew with their certificate. With `pkiHttpPort`
 * the signed objects (CA certificates, CRLs, OCSP) are served over plain HTTP too, and nothing else.
 */
export async function startProvisioningApi(
  deps: ProvisioningDeps,
  options: { host?: string; port: number; pkiHttpPort?: number },
  mounted?: MountedRoutes,
): Promise<RunningApi> {
  const api = apiDeps(deps);
  const signedObjects = signedObjectRoutes(api);
  // Both listeners take the same timeouts, connection cap and slow-body rule.
  const guarded = <S extends http.Server | https.Server>(server: S): S => {
    limitConnections(server, deps.limits, (reason, address) => {
      deps.metrics.dropped(reason);
      deps.log.info({ address, reason }, 'API connection dropped');
    });
    return server;
  };
  const server = guarded(
    createAdaptorServer({
      fetch: createProvisioningApp(api, signedObjects, mounted).fetch,
      hostname: options.host,
      createServer: https.createServer,
      serverOptions: { ...secureContextOptions(deps.ca), requestCert: true, rejectUnauthorized: false, ...serverTimeouts(deps.limits) },
    }) as https.Server,
  );
  const servers: (http.Server | https.Server)[] = [server];
  if (options.pkiHttpPort !== undefined) {
    servers.push(
      guarded(
        createAdaptorServer({
          fetch: createPkiApp(api, signedObjects).fetch,
          hostname: options.host,
          createServer: http.createServer,
          serverOptions: serverTimeouts(deps.limits),
        }) as http.Server,
      ),
    );
  }
  const ports = [options.port, options.pkiHttpPort];
  try {
    // Together, so a port in use on one listener never leaves the other running unowned.
    await Promise.all(servers.map((s, i) => (s.listen(ports[i], options.host), once(s, 'listening'))));
  } catch (error) {
    for (const s of servers) s.close();
    throw error;
  }
  logServerErrors(server, deps.log, 'provisioning API');
  if (servers[1]) logServerErrors(servers[1], deps.log, 'PKI HTTP');
  const port = (server.address() as AddressInfo).port;
  const pkiHttpPort = servers[1] ? (servers[1].address() as AddressInfo).port : undefined;
  deps.log.info({ port, pkiHttpPort }, 'provisioning API listening (HTTPS; signed objects over HTTP too)');
  return {
    port,
    pkiHttpPort,
    reloadTrust: () => server.setSecureContext(secureContextOptions(deps.ca)),
    close: () =>
      Promise.all(
        servers.map(
          (s) =>
            new Promise<void>((resolve) => {
              s.close(() => resolve());
              s.closeAllConnections();
            }),
        ),
      ).then(() => undefined),
  };
}
