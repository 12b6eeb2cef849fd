import { z } from '@hono/zod-openapi';
import { DEVICE_ID_PATTERN, DEVICE_ID_RULE } from '../registry/index.js';

// The schemas every part serving the API shares (the provisioning API and the dashboard API): one
// definition of a device, a certificate and a problem, so the OpenAPI document names each once.

export const DeviceId = z.string().regex(DEVICE_ID_PATTERN, DEVICE_ID_RULE).openapi({ example: 'sensor-0001' });

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

export const DeviceSession = z
  .object({
    connected: z.boolean(),
    since: z.string().nullable(),
    address: z.string().nullable().openapi({ description: "the live session's peer address" }),
    serial: z.string().nullable().openapi({ description: 'the certificate the live session presented' }),
  })
  .openapi('DeviceSession');

export const DeviceWithCertificates = Device.extend({ certificates: z.array(Certificate), session: DeviceSession }).openapi('DeviceWithCertificates');

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

const ISO_TIME = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2}))?$/;

/** A moment in a query: an ISO 8601 date (midnight UTC) or a time with its offset, never a local time. */
export const IsoTime = z
  .string()
  .refine((s) => ISO_TIME.test(s) && !Number.isNaN(Date.parse(s)), 'an ISO 8601 date or time with offset, such as 2026-12-31 or 2026-12-31T12:00:00Z')
  .transform((s) => new Date(s))
  .openapi({ type: 'string', format: 'date-time', example: '2026-12-31T00:00:00Z' });

/** The paging parameters every list shares: the size of a page and the opaque cursor of the next. */
export const pageQuery = (max: number, fallback: number) => ({
  limit: z.coerce
    .number()
    .int()
    .min(1)
    .max(max)
    .optional()
    .openapi({ type: 'integer', minimum: 1, maximum: max, description: `rows per page, 1 to ${max} (default ${fallback})` }),
  cursor: z.string().max(512).optional().openapi({ description: "the previous page's nextCursor, as it is" }),
});

/** A list route's answers: a page of `key` rows with the next page's cursor, or a problem. */
export const pageResponses = <T extends z.ZodType>(key: string, row: T, what: string) => ({
  200: {
    description: `a page of ${what}; nextCursor is null on the last page`,
    content: { 'application/json': { schema: z.object({ [key]: z.array(row), nextCursor: z.string().nullable() }) } },
  },
  ...problemResponses(400, 401, 403),
});
