import { z } from '@hono/zod-openapi';
import { PageLimitSchema, TimestampSchema } from './common.js';

export const EventSchema = z
  .object({
    id: z.number().int(),
    type: z.string().openapi({ example: 'SNAPSHOT.BACKUP' }),
    level: z.enum(['INFO', 'WARN', 'ERROR']),
    accountId: z.string().nullable(),
    resourceType: z.string(),
    resourceId: z.string(),
    description: z.string(),
    details: z.record(z.string(), z.unknown()),
    createdAt: TimestampSchema,
  })
  .openapi('Event');

// Digits only: z.coerce.number would read an empty `since=` as 0 and replay everything.
const cursor = z
  .string()
  .regex(/^[0-9]{1,16}$/, 'must be a whole number')
  .transform(Number)
  .pipe(z.number().int().max(Number.MAX_SAFE_INTEGER, 'too large'))
  .openapi({ type: 'integer', minimum: 0, example: 42 });

export const EventListQuerySchema = z.object({
  since: cursor.optional().openapi({ description: 'Only events with a greater id' }),
  limit: PageLimitSchema,
});

export const EventStreamQuerySchema = z.object({
  since: cursor.optional().openapi({ description: 'Replay events after this id first (the Last-Event-ID header does the same)' }),
});

export const EventStreamHeadersSchema = z.object({
  'Last-Event-ID': z
    .string()
    .regex(/^\d{1,15}$/, 'must be an event id')
    .optional()
    .openapi({ description: 'Resume after this event id (sent by EventSource on reconnect)' }),
});

/**
 * One server-sent event as OpenAPI 3.1 tools read a text/event-stream schema (before 3.2's itemSchema, the
 * schema describes each event): `data` holds the JSON of an Event, or of a progress record for `event: progress`.
 */
export const ServerSentEventSchema = z
  .object({
    event: z.enum(['message', 'progress', 'ready']).optional().openapi({ description: 'absent for audit events (`message`)' }),
    id: z.string().optional().openapi({ description: 'the event id, for Last-Event-ID' }),
    data: z.string().openapi({ description: 'JSON' }),
    retry: z.number().int().optional(),
  })
  .openapi('ServerSentEvent');
