import { assertAdmin } from '../../middleware/auth.js';
import type { AppRouteHandler } from '../../types.js';
import type { ListRoute, UpdateRoute } from './configurations.routes.js';

export const list: AppRouteHandler<ListRoute> = async (c) => c.json(await c.var.services.configurations.list(), 200);

export const update: AppRouteHandler<UpdateRoute> = async (c) => {
  assertAdmin(c);
  const { name } = c.req.valid('param');
  return c.json(await c.var.services.configurations.update(c.var.caller, name, c.req.valid('json').value), 200);
};
