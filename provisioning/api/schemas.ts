import { z } from '@hono/zod-openapi';
import { DEVICE_ID_PATTERN, DEVICE_ID_RULE, REVOCATION_REASONS } from '../../core/registry/index.js';

export const DeviceId = z.string().regex(DEVICE_ID_PATTERN, DEVICE_ID_RULE).openapi({ example: 'sensor-0001' });
export const BatchName = z.string().regex(DEVICE_ID_PATTERN, DEVICE_ID_RULE).openapi({ example: 'line-3-2026-11-24' });
export const Profile = z.string().min(1).max(64).openapi({ description: 'hardware profile', example: 'mcu-p256' });
export const Metadata = z
  .record(z.string().max(64), z.union([z.string().max(256), z.number(), z.boolean(), z.null()]))
  .refine((m) => Object.keys(m).length <= 32, 'at most 32 metadata keys')
  .openapi({ example: { line: '3', firmware: '1.4.2' } });
export const Lifetime = z.string().regex(/^\d+(ms|s|m|h|d)$/, 'a duration such as 90d, 12h or 30m').openapi({ example: '30d' });

export const Certificate = z
  .object({
    serial: z.string(),
    fingerprint: z.string().openapi({ description: 'SHA-256 of the DER certificate, lower-case hex' }),
    status: z.enum(['active', 'superseded', 'suspended', 'revoked']),
    notBefore: z.string(),
    notAfter: z.string(),
    revokedAt: z.string().nullable(),
    revocationReason: z.number().int().nullable(),
    supersededAt: z.string().nullable(),
    acceptUntil: z.string().nullable().openapi({ description: 'for a superseded certificate: accepted by the broker until then' }),
  })
  .openapi('Certificate');

export const Device = z
  .object({
    id: DeviceId,
    status: z.enum(['pending', 'active', 'suspended', 'revoked']),
    kind: z.enum(['device', 'service']),
    role: z.string().nullable(),
    batch: z.string().nullable(),
    profile: z.string().nullable(),
    metadata: z.record(z.string(), z.unknown()),
    createdAt: z.string(),
    updatedAt: z.string(),
    lastSeenAt: z.string().nullable(),
    connected: z.boolean(),
    connectedSince: z.string().nullable(),
    peerAddress: z.string().nullable(),
  })
  .openapi('Device');

export const DeviceWithCertificates = Device.extend({ certificates: z.array(Certificate) }).openapi('DeviceWithCertificates');

export const RevocationReason = z
  .enum(Object.keys(REVOCATION_REASONS) as [keyof typeof REVOCATION_REASONS, ...(keyof typeof REVOCATION_REASONS)[]])
  .openapi({ description: 'RFC 5280 CRLReason' });

export const IssuedCertificate = z
  .object({
    deviceId: z.string(),
    serial: z.string(),
    fingerprint: z.string(),
    notBefore: z.string(),
    notAfter: z.string(),
    certificate: z.string().openapi({ description: 'the device certificate, PEM' }),
    chain: z.string().openapi({ description: 'the device certificate then the issuing CA, PEM' }),
    previousSerial: z.string().optional().openapi({ description: 'for a renewal: the certificate this one supersedes' }),
  })
  .openapi('IssuedCertificate');

export { Problem, problemResponses } from '../../core/http/problem-schema.js';

/** Dates leave the API as ISO 8601 strings. */
export function isoDates<T extends object>(value: T): { [K in keyof T]: T[K] extends Date ? string : T[K] extends Date | null ? string | null : T[K] } {
  const out: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(value)) out[key] = v instanceof Date ? v.toISOString() : v;
  return out as never;
}
