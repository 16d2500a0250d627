import { assertAdmin } from '../../middleware/auth.js';
import type { AppRouteHandler } from '../../types.js';
import type { CreateRoute, ListRoute } from './accounts.routes.js';

export const create: AppRouteHandler<CreateRoute> = async (c) => {
  assertAdmin(c);
  return c.json(await c.var.services.accounts.create(c.req.valid('json')), 201);
};

export const list: AppRouteHandler<ListRoute> = async (c) => {
  assertAdmin(c);
  return c.json(await c.var.services.accounts.list(), 200);
};
