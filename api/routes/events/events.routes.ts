import { createRoute, z } from '@hono/zod-openapi';
import { errorResponses, jsonContent } from '../../schemas/common.js';
import { EventListQuerySchema, EventSchema, EventStreamHeadersSchema, EventStreamQuerySchema, ServerSentEventSchema } from '../../schemas/event.js';

const tags = ['Events'];

export const list = createRoute({
  path: '/api/v1/events',
  method: 'get',
  tags,
  summary: 'Audit and notification events, oldest first (own account\'s; an admin sees all)',
  request: { query: EventListQuerySchema },
  responses: { 200: jsonContent(z.array(EventSchema), 'Events after `since`'), ...errorResponses(400, 401) },
});

export const stream = createRoute({
  path: '/api/v1/events/stream',
  method: 'get',
  tags,
  summary: 'Server-sent events: every new event, and backup progress',
  description:
    'Each audit event is an unnamed SSE message (`id` = event id, `data` = the Event JSON). `event: progress` messages carry ' +
    '`{snapshotId, volumeId, state, attempts, maxAttempts, bytesDone, bytesTotal, nextAttemptAt, lastError}` of in-flight snapshots ' +
    'when they change (checked about once a second). ' +
    '`event: ready` is sent once the stream is live. Resume with `Last-Event-ID` (or `?since=`): events after that id are replayed first.',
  request: { query: EventStreamQuerySchema, headers: EventStreamHeadersSchema },
  responses: {
    200: { description: 'An event stream', content: { 'text/event-stream': { schema: ServerSentEventSchema } } },
    ...errorResponses(400, 401),
  },
});

export type ListRoute = typeof list;
export type StreamRoute = typeof stream;
