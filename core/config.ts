import { isIP } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { parseDuration } from './duration.js';
import type { ServerLimits } from './http/server-limits.js';
import { KEY_KINDS, type KeyKind } from './pki/key-kinds.js';
import { LOG_FORMATS, type LogFormat } from './log.js';

/** Everything a fleet-auth process can be told from its environment, validated once at start. */
export interface FleetConfig {
  dataDir: string;
  /** Unset means: run the embedded PostgreSQL under `dataDir`. */
  databaseUrl: string | undefined;
  listenHost: string | undefined;
  apiPort: number;
  brokerPort: number;
  /** Extra DNS names or IP addresses for the server certificate, beside localhost, 127.0.0.1 and ::1. */
  hostnames: string[];
  trustDomain: string;
  certificateLifetimeMs: number;
  minCertificateLifetimeMs: number;
  maxCertificateLifetimeMs: number;
  allowedKeys: KeyKind[];
  /** Base URL of the API as devices reach it; in certificates only while the PKI listener is off. */
  publicUrl: string | undefined;
  /** The plain-HTTP listener for CRLs, OCSP and CA certificates; undefined when turned off. */
  pkiHttpPort: number | undefined;
  /** Base URL of that listener as relying parties reach it, for the CRL, OCSP and issuer URLs in certificates. */
  pkiPublicUrl: string | undefined;
  renewalOverlapMs: number;
  allowKeyReuse: boolean;
  /** How long after expiry a certificate may still renew over mTLS; 0 never. */
  renewAfterExpiryMs: number;
  enrollmentTokenTtlMs: number;
  /** A JSON file of topic policy templates; unset uses the built-in default. */
  brokerPolicyFile: string | undefined;
  brokerCacheSize: number;
  brokerStaleGraceMs: number;
  brokerConnectTimeoutMs: number;
  logLevel: string;
  /** json or pretty; unset chooses by whether the log goes to a terminal. */
  logFormat: LogFormat | undefined;
  /** Encrypts the CA's private keys at rest; unset keeps them unencrypted (with a warning at start). */
  caPassphrase: string | undefined;
  /** A PKCS#11 token that keeps the issuing CA keys (FLEET_CA_PKCS11_*); unset keeps them in files. */
  caPkcs11: { module: string; token: string; pin: string; keyLabel: string } | undefined;
  /** The curve of a root CA made on first start; an existing root keeps its own. */
  rootCurve: 'P-256' | 'P-384';
  /** Where Prometheus scrapes the broker's metrics (plain HTTP, GET /metrics); loopback by default. */
  metricsHost: string;
  /** Undefined when turned off (FLEET_METRICS_PORT=off), which the metrics_disabled audit reports. */
  metricsPort: number | undefined;
  /** New broker connections one address may open per second, sustained, and at once after a quiet spell. */
  brokerConnectRate: number;
  brokerConnectBurst: number;
  /** Broker connections open at once, from everyone; unset derives it from the open-file limit. */
  brokerMaxConnections: number | undefined;
  /** The largest MQTT packet the broker reads, fixed header included; a larger one closes the connection. */
  brokerMaxPacketBytes: number;
  /** The longest MQTT keepalive a device may ask for, in seconds; 0 accepts any. */
  brokerKeepaliveMaxSeconds: number;
  /** Redis that broker processes and machines share subscriptions and retained messages through; unset keeps them in memory. */
  redisUrl: string | undefined;
  /** Broker processes on this machine sharing one listener; more than one needs `redisUrl`. */
  brokerWorkers: number;
  /** This broker node in the registry's presence; the same id across restarts of the same node. */
  brokerNodeId: string;
  /** How long a node's presence outlives its last lease renewal; another node then clears it. */
  presenceLeaseMs: number;
  /** How long device events (connects, refusals, revocations…) are kept before they are deleted. */
  eventRetentionMs: number;
  /** Server-Sent Event streams (GET /v1/events) one process serves at once. */
  eventStreamsMax: number;
  /** How much of the provisioning API one client may use (FLEET_API_*). */
  apiLimits: ApiLimits;
  /** Proxies in front of the API (forwarded client certificates) and the broker (PROXY protocol headers) that are believed. */
  proxy: TrustedProxyConfig;
}

/** How fast one address or one credential may ask the API, and how failed authentication backs off. */
export interface ThrottleLimits {
  addressPerSecond: number;
  addressBurst: number;
  credentialPerSecond: number;
  credentialBurst: number;
  /** Failed authentications an address may have before it is made to wait. */
  authFailuresFree: number;
  /** The longest wait; also how long without a failure before an address's failures are forgotten. */
  authBackoffMaxMs: number;
}

/** The API's connection and timeout limits, and its rate limits per address and per credential. */
export interface ApiLimits extends ServerLimits, ThrottleLimits {}

export interface TrustedProxyConfig {
  /**
   * Addresses and CIDR blocks of the proxies; empty believes no forwarded certificate. The broker
   * believes their PROXY protocol headers too, and requires one from them.
   */
  trustedProxies: string[];
  /** nginx: $ssl_client_escaped_cert in this header; x-forwarded-client-cert means Envoy's XFCC form. */
  certHeader: string;
  /** nginx: $ssl_client_verify in this header; only SUCCESS is believed. */
  verifyHeader: string;
}

/** An IPv4 or IPv6 address, or a CIDR block of either. */
const isAddressOrBlock = (text: string): boolean => {
  const [address, bits, extra] = text.split('/');
  const family = isIP(address ?? '');
  if (family === 0 || extra !== undefined) return false;
  if (bits === undefined) return true;
  return /^\d{1,3}$/.test(bits) && Number(bits) <= (family === 4 ? 32 : 128);
};
const HEADER_NAME = /^[A-Za-z0-9-]+$/;

const duration = (fallback: string) =>
  z
    .string()
    .default(fallback)
    .transform((text, ctx) => {
      const ms = parseDuration(text);
      if (ms === undefined || ms <= 0) {
        ctx.addIssue({ code: 'custom', message: `"${text}" is not a duration such as 90d, 12h, 30m or 45s` });
        return z.NEVER;
      }
      return ms;
    });

const optionalDuration = () =>
  z
    .string()
    .optional()
    .transform((text, ctx) => {
      if (text === undefined) return 0;
      const ms = parseDuration(text);
      if (ms === undefined || ms <= 0) {
        ctx.addIssue({ code: 'custom', message: `"${text}" is not a duration such as 7d or 12h` });
        return z.NEVER;
      }
      return ms;
    });

const port = (fallback: number) => z.coerce.number().int().min(0).max(65535).default(fallback);

const schema = z.object({
  FLEET_DATA_DIR: z.string().min(1).default('./data'),
  DATABASE_URL: z.string().min(1).optional(),
  FLEET_LISTEN_HOST: z.string().min(1).optional(),
  FLEET_API_PORT: port(8443),
  FLEET_BROKER_PORT: port(8883),
  FLEET_HOSTNAMES: z.string().default(''),
  FLEET_TRUST_DOMAIN: z
    .string()
    .regex(/^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/, 'a lower-case DNS-style name such as fleet.example.com')
    .default('fleet.local'),
  FLEET_CERT_LIFETIME: duration('90d'),
  FLEET_CERT_LIFETIME_MIN: duration('5m'),
  FLEET_CERT_LIFETIME_MAX: duration('397d'),
  FLEET_ALLOWED_KEYS: z
    .string()
    .default('ec-p256,ec-p384')
    .transform((text) => text.split(',').map((k) => k.trim()).filter(Boolean))
    .pipe(z.array(z.enum(KEY_KINDS, { error: `each key kind must be one of ${KEY_KINDS.join(', ')}` })).min(1)),
  FLEET_PUBLIC_URL: z.url({ protocol: /^https$/, error: 'an https:// URL such as https://fleet.example.com:8443' }).optional(),
  FLEET_PKI_HTTP_PORT: z.union([z.literal('off'), port(8080)]).default(8080),
  FLEET_PKI_PUBLIC_URL: z.url({ protocol: /^http$/, error: 'an http:// URL such as http://pki.fleet.example.com' }).optional(),
  FLEET_RENEWAL_OVERLAP: duration('1h'),
  FLEET_RENEW_AFTER_EXPIRY: optionalDuration(),
  FLEET_ALLOW_KEY_REUSE: z.enum(['true', 'false']).default('false'),
  FLEET_ENROLLMENT_TOKEN_TTL: duration('7d'),
  // The length rule says nothing about the value, so the passphrase never appears in an error.
  FLEET_CA_PASSPHRASE: z.string().min(12, 'must be at least 12 characters').optional(),
  FLEET_CA_PKCS11_MODULE: z.string().min(1).optional(),
  FLEET_CA_PKCS11_TOKEN: z.string().min(1).optional(),
  FLEET_CA_PKCS11_PIN: z.string().min(1).optional(),
  FLEET_CA_PKCS11_KEY_LABEL: z.string().min(1).default('fleet-ca'),
  FLEET_ROOT_CURVE: z.enum(['P-256', 'P-384'], { error: (issue) => `"${String(issue.input)}" is not a root curve: P-256 (the default) or P-384` }).default('P-256'),
  FLEET_BROKER_POLICY: z.string().min(1).optional(),
  FLEET_BROKER_CACHE_SIZE: z.coerce.number().int().min(1).max(10_000_000).default(100_000),
  FLEET_BROKER_STALE_GRACE: duration('5m'),
  FLEET_BROKER_CONNECT_TIMEOUT: duration('10s'),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  FLEET_LOG_FORMAT: z.enum(LOG_FORMATS).optional(),
  FLEET_METRICS_HOST: z.string().min(1).default('127.0.0.1'),
  FLEET_METRICS_PORT: z.union([z.literal('off'), port(9464)]).default(9464),
  FLEET_BROKER_CONNECT_RATE: z.coerce.number().positive().default(50),
  FLEET_BROKER_CONNECT_BURST: z.coerce.number().int().min(1).default(100),
  FLEET_BROKER_MAX_CONNECTIONS: z.coerce.number().int().min(1).optional(),
  // A CONNECT with a long client id fits in well under 1 KiB; MQTT itself stops at 256 MiB plus a 5-byte header.
  FLEET_BROKER_MAX_PACKET_BYTES: z.coerce.number().int().min(1024).max(268_435_460).default(262_144),
  // MQTT's keepalive field is 16 bits.
  FLEET_BROKER_KEEPALIVE_MAX: z.coerce.number().int().min(0).max(65_535).default(1200),
  FLEET_REDIS_URL: z.url({ protocol: /^rediss?$/, error: 'a redis:// (or rediss://) URL such as redis://redis.internal:6379/0' }).optional(),
  FLEET_BROKER_WORKERS: z.coerce.number().int().min(1, 'a whole number of broker processes, 1 or more').max(1024).optional(),
  // Any printable text: a machine's host name, or `<node>/w<n>` for one worker process of it.
  FLEET_NODE_ID: z
    .string()
    .regex(/^[\x21-\x7e]{1,200}$/, 'must be 1 to 200 printable characters without spaces, such as broker-1')
    .default(() => os.hostname().slice(0, 200) || 'fleet-auth'),
  FLEET_PRESENCE_LEASE: duration('30s'),
  FLEET_EVENT_RETENTION: duration('30d'),
  FLEET_EVENT_STREAMS_MAX: z.coerce.number().int().min(1).max(100_000).default(100),
  FLEET_API_MAX_CONNECTIONS: z.coerce.number().int().min(1).default(1024),
  FLEET_API_HEADERS_TIMEOUT: duration('10s'),
  FLEET_API_REQUEST_TIMEOUT: duration('2m'),
  FLEET_API_BODY_MIN_RATE: z.coerce.number().int().min(1).default(1024),
  FLEET_API_BODY_RATE_WINDOW: duration('10s'),
  FLEET_API_RATE: z.coerce.number().positive().default(200),
  FLEET_API_BURST: z.coerce.number().int().min(1).default(400),
  FLEET_API_CREDENTIAL_RATE: z.coerce.number().positive().default(20),
  FLEET_API_CREDENTIAL_BURST: z.coerce.number().int().min(1).default(200),
  FLEET_API_AUTH_FAILURES: z.coerce.number().int().min(0).default(20),
  FLEET_API_AUTH_BACKOFF_MAX: duration('15m'),
  FLEET_TRUSTED_PROXIES: z
    .string()
    .default('')
    .transform((text) => text.split(',').map((a) => a.trim()).filter(Boolean))
    .pipe(z.array(z.string().refine(isAddressOrBlock, 'each entry must be an IP address or a CIDR block such as 10.0.0.0/8'))),
  FLEET_PROXY_CERT_HEADER: z.string().regex(HEADER_NAME, 'an HTTP header name such as X-SSL-Client-Cert').default('X-SSL-Client-Cert'),
  FLEET_PROXY_VERIFY_HEADER: z.string().regex(HEADER_NAME, 'an HTTP header name such as X-SSL-Client-Verify').default('X-SSL-Client-Verify'),
});

/** Every variable the configuration reads; the README's Configuration table must name each one. */
export const CONFIG_VARIABLES: readonly string[] = Object.keys(schema.shape);

export class ConfigError extends Error {
  override name = 'ConfigError';
}

function pkcs11Of(e: z.infer<typeof schema>): FleetConfig['caPkcs11'] {
  const { FLEET_CA_PKCS11_MODULE: module, FLEET_CA_PKCS11_TOKEN: token, FLEET_CA_PKCS11_PIN: pin } = e;
  if (module === undefined) return undefined;
  // Names, never values: the PIN must not reach an error message.
  const missing = [token === undefined && 'FLEET_CA_PKCS11_TOKEN', pin === undefined && 'FLEET_CA_PKCS11_PIN'].filter(Boolean);
  if (token === undefined || pin === undefined) {
    throw new ConfigError(`Invalid configuration in the environment:\n  FLEET_CA_PKCS11_MODULE is set, so ${missing.join(' and ')} must be too`);
  }
  return { module, token, pin, keyLabel: e.FLEET_CA_PKCS11_KEY_LABEL };
}

/**
 * Broker processes share sessions, subscriptions and retained messages only through Redis: without it
 * a second process would be a broker of its own, where a revocation or a takeover would not reach.
 */
function brokerScaling(e: z.infer<typeof schema>): Pick<FleetConfig, 'redisUrl' | 'brokerWorkers'> {
  const redisUrl = e.FLEET_REDIS_URL;
  if (redisUrl === undefined && (e.FLEET_BROKER_WORKERS ?? 1) > 1) {
    throw new ConfigError(
      'Invalid configuration in the environment:\n  FLEET_BROKER_WORKERS is above 1, so FLEET_REDIS_URL must be set: broker processes share their state through Redis',
    );
  }
  return { redisUrl, brokerWorkers: e.FLEET_BROKER_WORKERS ?? (redisUrl === undefined ? 1 : os.availableParallelism()) };
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): FleetConfig {
  const parsed = schema.safeParse(env);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((issue) => `  ${issue.path.join('.')}: ${issue.message}`);
    throw new ConfigError(`Invalid configuration in the environment:\n${lines.join('\n')}`);
  }
  const e = parsed.data;
  if (e.FLEET_CERT_LIFETIME < e.FLEET_CERT_LIFETIME_MIN || e.FLEET_CERT_LIFETIME > e.FLEET_CERT_LIFETIME_MAX) {
    throw new ConfigError('Invalid configuration in the environment:\n  FLEET_CERT_LIFETIME must lie between FLEET_CERT_LIFETIME_MIN and FLEET_CERT_LIFETIME_MAX');
  }
  // Renewed every third of the lease: a shorter one would have nodes writing the database constantly.
  if (e.FLEET_PRESENCE_LEASE < 3000) {
    throw new ConfigError('Invalid configuration in the environment:\n  FLEET_PRESENCE_LEASE must be at least 3s (30s is the default)');
  }
  return {
    ...brokerScaling(e),
    dataDir: path.resolve(e.FLEET_DATA_DIR),
    databaseUrl: e.DATABASE_URL,
    listenHost: e.FLEET_LISTEN_HOST,
    apiPort: e.FLEET_API_PORT,
    brokerPort: e.FLEET_BROKER_PORT,
    hostnames: e.FLEET_HOSTNAMES.split(',').map((h) => h.trim()).filter(Boolean),
    trustDomain: e.FLEET_TRUST_DOMAIN,
    certificateLifetimeMs: e.FLEET_CERT_LIFETIME,
    minCertificateLifetimeMs: e.FLEET_CERT_LIFETIME_MIN,
    maxCertificateLifetimeMs: e.FLEET_CERT_LIFETIME_MAX,
    allowedKeys: e.FLEET_ALLOWED_KEYS,
    publicUrl: e.FLEET_PUBLIC_URL?.replace(/\/+$/, ''),
    pkiHttpPort: e.FLEET_PKI_HTTP_PORT === 'off' ? undefined : e.FLEET_PKI_HTTP_PORT,
    pkiPublicUrl: e.FLEET_PKI_PUBLIC_URL?.replace(/\/+$/, ''),
    renewalOverlapMs: e.FLEET_RENEWAL_OVERLAP,
    renewAfterExpiryMs: e.FLEET_RENEW_AFTER_EXPIRY,
    allowKeyReuse: e.FLEET_ALLOW_KEY_REUSE === 'true',
    enrollmentTokenTtlMs: e.FLEET_ENROLLMENT_TOKEN_TTL,
    brokerPolicyFile: e.FLEET_BROKER_POLICY,
    brokerCacheSize: e.FLEET_BROKER_CACHE_SIZE,
    brokerStaleGraceMs: e.FLEET_BROKER_STALE_GRACE,
    brokerConnectTimeoutMs: e.FLEET_BROKER_CONNECT_TIMEOUT,
    logLevel: e.LOG_LEVEL,
    logFormat: e.FLEET_LOG_FORMAT,
    caPassphrase: e.FLEET_CA_PASSPHRASE,
    caPkcs11: pkcs11Of(e),
    rootCurve: e.FLEET_ROOT_CURVE,
    metricsHost: e.FLEET_METRICS_HOST,
    metricsPort: e.FLEET_METRICS_PORT === 'off' ? undefined : e.FLEET_METRICS_PORT,
    brokerConnectRate: e.FLEET_BROKER_CONNECT_RATE,
    brokerConnectBurst: e.FLEET_BROKER_CONNECT_BURST,
    brokerMaxConnections: e.FLEET_BROKER_MAX_CONNECTIONS,
    brokerMaxPacketBytes: e.FLEET_BROKER_MAX_PACKET_BYTES,
    brokerKeepaliveMaxSeconds: e.FLEET_BROKER_KEEPALIVE_MAX,
    brokerNodeId: e.FLEET_NODE_ID,
    presenceLeaseMs: e.FLEET_PRESENCE_LEASE,
    eventRetentionMs: e.FLEET_EVENT_RETENTION,
    eventStreamsMax: e.FLEET_EVENT_STREAMS_MAX,
    apiLimits: {
      maxConnections: e.FLEET_API_MAX_CONNECTIONS,
      headersTimeoutMs: e.FLEET_API_HEADERS_TIMEOUT,
      requestTimeoutMs: e.FLEET_API_REQUEST_TIMEOUT,
      bodyMinBytesPerSecond: e.FLEET_API_BODY_MIN_RATE,
      bodyRateWindowMs: e.FLEET_API_BODY_RATE_WINDOW,
      addressPerSecond: e.FLEET_API_RATE,
      addressBurst: e.FLEET_API_BURST,
      credentialPerSecond: e.FLEET_API_CREDENTIAL_RATE,
      credentialBurst: e.FLEET_API_CREDENTIAL_BURST,
      authFailuresFree: e.FLEET_API_AUTH_FAILURES,
      authBackoffMaxMs: e.FLEET_API_AUTH_BACKOFF_MAX,
    },
    proxy: { trustedProxies: e.FLEET_TRUSTED_PROXIES, certHeader: e.FLEET_PROXY_CERT_HEADER, verifyHeader: e.FLEET_PROXY_VERIFY_HEADER },
  };
}
