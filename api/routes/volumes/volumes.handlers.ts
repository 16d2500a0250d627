import { page } from '../../paging.js';
import type { AppRouteHandler } from '../../types.js';
import type { CreateRoute, GetRoute, ListRoute, MigrateRoute, RemoveRoute, ResizeRoute } from './volumes.routes.js';

export const create: AppRouteHandler<CreateRoute> = async (c) =>
  c.json(await c.var.services.volumes.create(c.var.caller, c.req.valid('json')), 201);

export const list: AppRouteHandler<ListRoute> = async (c) => {
  const query = c.req.valid('query');
  const items = await c.var.services.volumes.list(c.var.caller, { ...query, limit: query.limit + 1 });
  return c.json(page(c, items, query.limit, 'after', (v) => v.id), 200);
};

export const get: AppRouteHandler<GetRoute> = async (c) =>
  c.json(await c.var.services.volumes.get(c.var.caller, c.req.valid('param').id), 200);

export const remove: AppRouteHandler<RemoveRoute> = async (c) =>
  c.json(await c.var.services.volumes.delete(c.var.caller, c.req.valid('param').id), 200);

export const resize: AppRouteHandler<ResizeRoute> = async (c) =>
  c.json(await c.var.services.volumes.resize(c.var.caller, c.req.valid('param').id, c.req.valid('json')), 200);

export const migrate: AppRouteHandler<MigrateRoute> = async (c) =>
  c.json(await c.var.services.volumes.migrate(c.var.caller, c.req.valid('param').id, c.req.valid('json')), 200);
