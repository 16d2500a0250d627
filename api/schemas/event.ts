import { z } from '@hono/zod-openapi';
import { TimestampSchema } from './common.js';

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

const cursor = z.coerce
  .number({ error: 'must be a number' })
  .int('must be an integer')
  .min(0, 'must be at least 0')
  .max(Number.MAX_SAFE_INTEGER, 'too large');

export const EventListQuerySchema = z.object({
  since: cursor.optional().openapi({ description: 'Only events with a greater id' }),
  limit: z.coerce.number({ error: 'must be a number' }).int('must be an integer').min(1, 'must be at least 1').max(1000, 'must be at most 1000').default(100),
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
