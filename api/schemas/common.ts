import { ERROR_CODES, ERROR_CODE_NAMES } from '../../domain/errors.js';
import { HYPERVISORS } from '../../domain/hypervisor.js';
import { z } from '@hono/zod-openapi';

/** The error shape of every non-2xx answer. */
export const ErrorSchema = z
  .object({
    error: z.object({
      code: z.enum(ERROR_CODE_NAMES).openapi({
        example: 'OPERATION_NOT_ALLOWED_DURING_BACKUP',
        description: ERROR_CODE_NAMES.map((c) => `${c} (${ERROR_CODES[c].status}): ${ERROR_CODES[c].description}`).join('; '),
      }),
      message: z.string(),
      details: z.record(z.string(), z.unknown()),
    }),
  })
  .openapi('Error');

/** A resource id in the path; anything but a UUID is a 400 (never a database error). */
export const IdParamsSchema = z.object({
  id: z.guid({ error: 'must be a UUID' }).openapi({ param: { name: 'id', in: 'path' }, example: '3f0c2a6e-5d3b-4a8e-9a41-0c3b2f1e7d10' }),
});

/** A reference to another resource by id, in a body or query. */
export const uuid = (description: string) => z.guid({ error: 'must be a UUID' }).openapi({ description });

/** A human-readable name: 1–128 printable characters. */
export const NameSchema = z
  .string({ error: 'must be a string' })
  .trim()
  .min(1, 'must not be empty')
  .max(128, 'must be at most 128 characters')
  // The C0/C1 control characters spelled out: a /u flag would leak into the OpenAPI pattern and break clients.
  .regex(/^[^\x00-\x1f\x7f-\x9f]*$/, 'must not contain control characters');

export const MAX_VOLUME_BYTES = 2 ** 44; // 16 TiB

/** A volume size: qemu-img works in whole 512-byte sectors, so sizes are positive multiples of 512. */
export const SizeBytesSchema = z
  .number({ error: 'must be a number' })
  .int('must be an integer')
  .positive('must be positive')
  .multipleOf(512, 'must be a multiple of 512 bytes')
  .max(MAX_VOLUME_BYTES, `must be at most ${MAX_VOLUME_BYTES} bytes (16 TiB)`)
  // The document generator drops zod's multipleOf; state it so clients and fuzzers see the rule the server applies.
  .openapi({ example: 1073741824, multipleOf: 512 });

export const HypervisorSchema = z.enum(HYPERVISORS).openapi({ description: 'XenServer is accepted by the schema; the server refuses it while no XenServer driver is configured' });

/** The largest page a list endpoint answers; `limit` defaults to DEFAULT_PAGE_SIZE. */
export const MAX_PAGE_SIZE = 1000;
export const DEFAULT_PAGE_SIZE = 100;

/** `?limit=` of a paged list. */
export const PageLimitSchema = z.coerce
  .number({ error: 'must be a number' })
  .int('must be an integer')
  .min(1, 'must be at least 1')
  .max(MAX_PAGE_SIZE, `must be at most ${MAX_PAGE_SIZE}`)
  .default(DEFAULT_PAGE_SIZE)
  .openapi({ description: `Page size (at most ${MAX_PAGE_SIZE}); when more follow, the answer's X-Next-Cursor header and Link rel="next" name the next page` });

/** The headers of a paged list's answer. */
export const PageHeadersSchema = z.object({
  'X-Next-Cursor': z.string().optional().openapi({ description: 'Present when more items follow: pass it as the cursor parameter (`after`, `since`) of the next request' }),
  Link: z.string().optional().openapi({ description: 'RFC 8288 link to the next page: `<url>; rel="next"`' }),
});

export const TimestampSchema = z.string().openapi({ format: 'date-time' });

/** A JSON response description for a route. */
export function jsonContent<T extends z.ZodType>(schema: T, description: string) {
  return { content: { 'application/json': { schema } }, description };
}

/** A required JSON request body. */
export function jsonBody<T extends z.ZodType>(schema: T, description?: string) {
  return { content: { 'application/json': { schema } }, required: true, ...(description ? { description } : {}) };
}

/** An optional JSON request body (its fields have defaults). */
export function optionalJsonBody<T extends z.ZodType>(schema: T) {
  return { content: { 'application/json': { schema } }, required: false };
}

const ERROR_DESCRIPTIONS = {
  400: 'Invalid input: `details.fields` names each bad field',
  401: 'Missing or invalid API key',
  403: 'Needs an admin account',
  404: 'Not found (also another account\'s resource)',
  409: 'State or policy conflict, e.g. OPERATION_NOT_ALLOWED_DURING_BACKUP',
  408: 'The request body did not arrive within the body timeout (REQUEST_TIMEOUT)',
  413: 'Request body over 1 MiB',
  422: 'The Idempotency-Key was used with a different request (IDEMPOTENCY_KEY_MISMATCH)',
  429: 'Too many requests with this key (RATE_LIMITED), or too many event streams (TOO_MANY_STREAMS); retry after Retry-After seconds',
  503: 'Service unavailable (stopping, or a dependency is down): retry after `Retry-After` seconds',
} as const;

type ErrorStatus = keyof typeof ERROR_DESCRIPTIONS;

/**
 * Error responses of a route, all in the error shape. A route that authenticates (401) is rate limited per key,
 * so 429 comes with it; every route may answer 503 while the service stops or a dependency is down.
 */
export function errorResponses<S extends ErrorStatus>(
  ...statuses: S[]
): { [K in S | 503 | (401 extends S ? 429 : never)]: ReturnType<typeof jsonContent<typeof ErrorSchema>> } {
  const all = new Set<ErrorStatus>(statuses);
  if (all.has(401)) all.add(429);
  all.add(503);
  return Object.fromEntries([...all].map((s) => [s, jsonContent(ErrorSchema, ERROR_DESCRIPTIONS[s])])) as never;
}
