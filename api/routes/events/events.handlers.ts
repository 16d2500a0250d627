import type { AppRouteHandler } from '../../types.js';
import { streamEvents } from './event-stream.js';
import type { ListRoute, StreamRoute } from './events.routes.js';

export const list: AppRouteHandler<ListRoute> = async (c) =>
  c.json(await c.var.services.events.list(c.var.caller, c.req.valid('query')), 200);

export const stream: AppRouteHandler<StreamRoute> = (c) => {
  const lastEventId = c.req.valid('header')['Last-Event-ID'];
  const since = lastEventId !== undefined ? Number(lastEventId) : c.req.valid('query').since;
  return streamEvents(c, since);
};
