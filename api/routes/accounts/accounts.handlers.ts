import type { Context } from 'hono';
import { assertAdmin } from '../../middleware/auth.js';
import type { AppBindings, AppRouteHandler } from '../../types.js';
import { NotFoundError } from '../../../domain/errors.js';
import type {
  CreateKeyRoute,
  CreateRoute,
  GetCloudStackKeysRoute,
  IssueCloudStackKeysRoute,
  ListKeysRoute,
  ListRoute,
  MeRoute,
  RevokeCloudStackKeysRoute,
  RevokeKeyRoute,
  UpdateRoute,
} from './accounts.routes.js';

export const create: AppRouteHandler<CreateRoute> = async (c) => {
  assertAdmin(c);
  const account = await c.var.services.accounts.create(c.req.valid('json'));
  // The account's CloudStack key pair (the /client/api dialect); the secret is shown here once.
  const { apiKey, secretKey } = await c.var.cloudstackKeys.issue(account.id);
  return c.json({ ...account, cloudstack: { apiKey, secretKey } }, 201);
};

export const list: AppRouteHandler<ListRoute> = async (c) => {
  assertAdmin(c);
  return c.json(await c.var.services.accounts.list(), 200);
};

export const me: AppRouteHandler<MeRoute> = async (c) => {
  const account = await c.var.services.accounts.get(c.var.caller.accountId);
  return c.json({ ...account, apiKeyId: c.var.caller.keyId ?? '' }, 200);
};

export const update: AppRouteHandler<UpdateRoute> = async (c) => {
  assertAdmin(c);
  return c.json(await c.var.services.accounts.setDisabled(c.req.valid('param').id, c.req.valid('json').disabled, c.var.caller.accountId), 200);
};

/** `me` is the caller's own account; another account's keys are an admin's business. */
function accountOf(c: Context<AppBindings>, ref: string): string {
  if (ref === 'me' || ref === c.var.caller.accountId) return c.var.caller.accountId;
  assertAdmin(c);
  return ref;
}

export const listKeys: AppRouteHandler<ListKeysRoute> = async (c) =>
  c.json(await c.var.services.accounts.listKeys(accountOf(c, c.req.valid('param').accountId)), 200);

export const createKey: AppRouteHandler<CreateKeyRoute> = async (c) => {
  const accountId = accountOf(c, c.req.valid('param').accountId);
  const body = c.req.valid('json') as { name?: string } | undefined;
  return c.json(await c.var.services.accounts.createKey(accountId, body?.name), 201);
};

export const revokeKey: AppRouteHandler<RevokeKeyRoute> = async (c) => {
  const { accountId, keyId } = c.req.valid('param');
  return c.json(await c.var.services.accounts.revokeKey(accountOf(c, accountId), keyId, c.var.caller.keyId), 200);
};

export const getCloudStackKeys: AppRouteHandler<GetCloudStackKeysRoute> = async (c) => {
  const accountId = accountOf(c, c.req.valid('param').accountId);
  await c.var.services.accounts.get(accountId);
  const keys = await c.var.cloudstackKeys.info(accountId);
  if (!keys) throw new NotFoundError('CloudStack key pair of account', accountId);
  return c.json(keys, 200);
};

export const issueCloudStackKeys: AppRouteHandler<IssueCloudStackKeysRoute> = async (c) => {
  const accountId = accountOf(c, c.req.valid('param').accountId);
  await c.var.services.accounts.get(accountId);
  const keys = await c.var.cloudstackKeys.issue(accountId);
  c.var.log.info({ accountId }, 'CloudStack key pair issued');
  return c.json(keys, 201);
};

export const revokeCloudStackKeys: AppRouteHandler<RevokeCloudStackKeysRoute> = async (c) => {
  const accountId = accountOf(c, c.req.valid('param').accountId);
  await c.var.services.accounts.get(accountId);
  const keys = await c.var.cloudstackKeys.revoke(accountId);
  if (!keys) throw new NotFoundError('CloudStack key pair of account', accountId);
  c.var.log.info({ accountId }, 'CloudStack key pair revoked');
  return c.json(keys, 200);
};
