import { z } from '@hono/zod-openapi';
import { DEVICE_ID_PATTERN, DEVICE_ID_RULE, REVOCATION_REASONS } from '../../core/registry/index.js';

export { Certificate, Device, DeviceId, DeviceSession, DeviceWithCertificates, isoDates, Problem, problemResponses } from '../../core/http/schemas.js';

export const BatchName = z.string().regex(DEVICE_ID_PATTERN, DEVICE_ID_RULE).openapi({ example: 'line-3-2026-11-24' });
export const Profile = z.string().min(1).max(64).openapi({ description: 'hardware profile', example: 'mcu-p256' });
export const Metadata = z
  .record(z.string().max(64), z.union([z.string().max(256), z.number(), z.boolean(), z.null()]))
  .refine((m) => Object.keys(m).length <= 32, 'at most 32 metadata keys')
  .openapi({ example: { line: '3', firmware: '1.4.2' } });
export const Lifetime = z.string().regex(/^\d+(ms|s|m|h|d)$/, 'a duration such as 90d, 12h or 30m').openapi({ example: '30d' });

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

