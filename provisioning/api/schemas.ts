import { z } from '@hono/zod-openapi';
import { DEVICE_ID_PATTERN, DEVICE_ID_RULE, REVOCATION_REASONS } from '../../core/registry/index.js';

export const DeviceId = z.string().regex(DEVICE_ID_PATTERN, DEVICE_ID_RULE).openapi({ example: 'sensor-0001' });

export const Certificate = z
  .object({
    serial: z.string(),
    fingerprint: z.string().openapi({ description: 'SHA-256 of the DER certificate, lower-case hex' }),
    status: z.enum(['active', 'superseded', 'revoked']),
    notBefore: z.string(),
    notAfter: z.string(),
    revokedAt: z.string().nullable(),
    revocationReason: z.number().int().nullable(),
  })
  .openapi('Certificate');

export const Device = z
  .object({
    id: DeviceId,
    status: z.enum(['pending', 'active', 'suspended', 'revoked']),
    createdAt: z.string(),
    updatedAt: z.string(),
    lastSeenAt: z.string().nullable(),
  })
  .openapi('Device');

export const DeviceWithCertificates = Device.extend({ certificates: z.array(Certificate) }).openapi('DeviceWithCertificates');

export const RevocationReason = z
  .enum(Object.keys(REVOCATION_REASONS) as [keyof typeof REVOCATION_REASONS, ...(keyof typeof REVOCATION_REASONS)[]])
  .openapi({ description: 'RFC 5280 CRLReason' });

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

/** Dates leave the API as ISO 8601 strings. */
export function isoDates<T extends object>(value: T): { [K in keyof T]: T[K] extends Date ? string : T[K] extends Date | null ? string | null : T[K] } {
  const out: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(value)) out[key] = v instanceof Date ? v.toISOString() : v;
  return out as never;
}
