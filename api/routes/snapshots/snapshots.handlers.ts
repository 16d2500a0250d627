import { page } from '../../paging.js';
import type { AppRouteHandler } from '../../types.js';
import type { CreateRoute, CreateVolumeRoute, GetRoute, ListRoute, RemoveRoute, RevertRoute } from './snapshots.routes.js';

export const create: AppRouteHandler<CreateRoute> = async (c) => {
  const body = c.req.valid('json');
  const idempotencyKey = c.req.valid('header')['Idempotency-Key'];
  const { snapshot, replay } = await c.var.services.snapshots.take(c.var.caller, c.req.valid('param').id, {
    asyncBackup: body.asyncBackup ?? false,
    ...(body.name !== undefined ? { name: body.name } : {}),
    ...(idempotencyKey !== undefined ? { idempotencyKey } : {}),
  });
  return replay ? c.json(snapshot, 200) : c.json(snapshot, 201);
};

export const list: AppRouteHandler<ListRoute> = async (c) => {
  const query = c.req.valid('query');
  const items = await c.var.services.snapshots.list(c.var.caller, { ...query, limit: query.limit + 1 });
  return c.json(page(c, items, query.limit, 'after', (s) => s.id), 200);
};

export const get: AppRouteHandler<GetRoute> = async (c) =>
  c.json(await c.var.services.snapshots.get(c.var.caller, c.req.valid('param').id), 200);

export const remove: AppRouteHandler<RemoveRoute> = async (c) =>
  c.json(await c.var.services.snapshots.delete(c.var.caller, c.req.valid('param').id), 200);

export const revert: AppRouteHandler<RevertRoute> = async (c) =>
  c.json(await c.var.services.snapshots.revert(c.var.caller, c.req.valid('param').id), 200);

export const createVolume: AppRouteHandler<CreateVolumeRoute> = async (c) =>
  c.json(await c.var.services.snapshots.createVolume(c.var.caller, c.req.valid('param').id, c.req.valid('json')), 201);
