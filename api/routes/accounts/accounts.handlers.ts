import { assertAdmin } from '../../middleware/auth.js';
import type { AppRouteHandler } from '../../types.js';
import type { CreateRoute, ListRoute, MeRoute } from './accounts.routes.js';

export const create: AppRouteHandler<CreateRoute> = async (c) => {
  assertAdmin(c);
  const account = await c.var.services.accounts.create(c.req.valid('json'));
  // The account's CloudStack key pair (the /client/api dialect); the secret is shown here once.
  const cloudstack = await c.var.cloudstackKeys.issue(account.id);
  return c.json({ ...account, cloudstack }, 201);
};

export const list: AppRouteHandler<ListRoute> = async (c) => {
  assertAdmin(c);
  return c.json(await c.var.services.accounts.list(), 200);
};

export const me: AppRouteHandler<MeRoute> = async (c) => c.json(await c.var.services.accounts.get(c.var.caller.accountId), 200);
