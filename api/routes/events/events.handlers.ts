import { page } from '../../paging.js';
import type { AppRouteHandler } from '../../types.js';
import { streamEvents } from './event-stream.js';
import type { ListRoute, StreamRoute } from './events.routes.js';

export const list: AppRouteHandler<ListRoute> = async (c) => {
  const query = c.req.valid('query');
  const items = await c.var.services.events.list(c.var.caller, { ...query, limit: query.limit + 1 });
  return c.json(page(c, items, query.limit, 'since', (e) => String(e.id)), 200);
};

export const stream: AppRouteHandler<StreamRoute> = (c) => {
  const lastEventId = c.req.valid('header')['Last-Event-ID'];
  const since = lastEventId !== undefined ? Number(lastEventId) : c.req.valid('query').since;
  // Each stream holds a LISTEN subscription and polls progress: a bounded number per account (429 beyond).
  const release = c.var.streams.acquire(c.var.caller.accountId);
  try {
    return streamEvents(c, since, release);
  } catch (err) {
    release();
    throw err;
  }
};
