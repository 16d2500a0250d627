import type { MiddlewareHandler } from 'hono';
import type { Context } from 'hono';
import { HttpError } from '../errors.js';
import type { AppBindings } from '../types.js';

const BEARER = /^Bearer\s+(\S+)\s*$/i;

/** Authenticates `Authorization: Bearer <api key>` and sets the caller; 401 otherwise. */
export const requireApiKey: MiddlewareHandler<AppBindings> = async (c, next) => {
  const header = c.req.header('authorization');
  const key = header ? BEARER.exec(header)?.[1] : undefined;
  if (!key) throw new HttpError(401, 'UNAUTHORIZED', 'missing API key: send Authorization: Bearer <api key>');
  const account = key.length <= 200 ? await c.var.services.accounts.authenticate(key) : undefined;
  // Unknown, revoked, or of a disabled account: one answer, so a probe learns nothing about which.
  if (!account) throw new HttpError(401, 'UNAUTHORIZED', 'invalid API key');
  c.set('caller', { accountId: account.id, role: account.role, keyId: account.keyId });
  c.set('log', c.var.log.child({ accountId: account.id }));
  await next();
};

/** Refuses non-admin callers with 403. */
export function assertAdmin(c: Context<AppBindings>): void {
  if (c.var.caller.role !== 'admin') throw new HttpError(403, 'FORBIDDEN', 'this operation needs an admin account');
}
