import { createRoute, z } from '@hono/zod-openapi';
import { errorResponses, jsonContent, PageHeadersSchema } from '../../schemas/common.js';
import { EventListQuerySchema, EventSchema, EventStreamHeadersSchema, EventStreamQuerySchema, ServerSentEventSchema } from '../../schemas/event.js';

const tags = ['Events'];

export const list = createRoute({
  path: '/api/v1/events',
  method: 'get',
  tags,
  summary: 'Audit and notification events, oldest first (own account\'s; an admin sees all)',
  request: { query: EventListQuerySchema },
  description: 'At most `limit` (default 100, at most 1000); when more follow, `X-Next-Cursor` holds the `since` of the next page and `Link` its URL.',
  responses: { 200: { ...jsonContent(z.array(EventSchema), 'Events after `since`'), headers: PageHeadersSchema }, ...errorResponses(400, 401) },
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
    '`event: ready` is sent once the stream is live. Resume with `Last-Event-ID` (or `?since=`): events after that id are replayed first. ' +
    'An account may hold EVENT_STREAMS_PER_ACCOUNT streams at once (default 5, per API process); one more is 429 TOO_MANY_STREAMS with Retry-After.',
  request: { query: EventStreamQuerySchema, headers: EventStreamHeadersSchema },
  responses: {
    200: { description: 'An event stream', content: { 'text/event-stream': { schema: ServerSentEventSchema } } },
    ...errorResponses(400, 401),
  },
});

export type ListRoute = typeof list;
export type StreamRoute = typeof stream;
