import { page } from '../../paging.js';
import type { AppRouteHandler } from '../../types.js';
import { assertAdmin } from '../../middleware/auth.js';
import type { ActRoute, AllowedActionsRoute, ConsoleRoute, CreateRoute, GetRoute, ListRoute, SnapshotTogetherRoute } from './vms.routes.js';

export const create: AppRouteHandler<CreateRoute> = async (c) =>
  c.json(await c.var.services.vms.create(c.var.caller, c.req.valid('json')), 201);

export const list: AppRouteHandler<ListRoute> = async (c) => {
  const query = c.req.valid('query');
  const items = await c.var.services.vms.list(c.var.caller, { ...query, limit: query.limit + 1 });
  return c.json(page(c, items, query.limit, 'after', (v) => v.id), 200);
};

export const get: AppRouteHandler<GetRoute> = async (c) =>
  c.json(await c.var.services.vms.get(c.var.caller, c.req.valid('param').id), 200);

export const allowedActions: AppRouteHandler<AllowedActionsRoute> = async (c) =>
  c.json(await c.var.services.vms.allowedActions(c.var.caller, c.req.valid('param').id), 200);

export const act: AppRouteHandler<ActRoute> = async (c) =>
  c.json(await c.var.services.vms.act(c.var.caller, c.req.valid('param').id, c.req.valid('json')), 200);

// Admin only: a guest's console may print anything (keys, addresses) and names no account boundary.
export const consoleTail: AppRouteHandler<ConsoleRoute> = async (c) => {
  assertAdmin(c);
  return c.json(await c.var.services.vms.consoleTail(c.var.caller, c.req.valid('param').id, c.req.valid('query').lines), 200);
};

export const snapshotTogether: AppRouteHandler<SnapshotTogetherRoute> = async (c) => {
  const body = c.req.valid('json');
  const taken = await c.var.services.snapshots.takeTogether(c.var.caller, c.req.valid('param').id, {
    asyncBackup: body.asyncBackup ?? false,
    ...(body.volumeIds ? { volumeIds: body.volumeIds } : {}),
    ...(body.name !== undefined ? { name: body.name } : {}),
  });
  return c.json(taken, 201);
};
