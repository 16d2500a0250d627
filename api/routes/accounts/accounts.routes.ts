import { createRoute, z } from '@hono/zod-openapi';
import {
  AccountKeyParamsSchema,
  AccountRefParamsSchema,
  AccountSchema,
  ApiKeySchema,
  CreateAccountSchema,
  CreateApiKeySchema,
  CreatedAccountSchema,
  CloudStackKeyInfoSchema,
  CreatedApiKeySchema,
  CurrentAccountSchema,
  IssuedCloudStackKeysSchema,
  UpdateAccountSchema,
} from '../../schemas/account.js';
import { errorResponses, IdParamsSchema, jsonBody, jsonContent } from '../../schemas/common.js';

const tags = ['Accounts'];

/** An optional JSON body: no body means every field takes its default. */
const optionalJsonBody = <T extends z.ZodType>(schema: T) => ({ content: { 'application/json': { schema } }, required: false });

export const create = createRoute({
  path: '/api/v1/accounts',
  method: 'post',
  tags,
  summary: 'Create an account (admin); the API key is in the answer, once',
  request: { body: jsonBody(CreateAccountSchema) },
  responses: {
    201: jsonContent(CreatedAccountSchema, 'The account with its new API key'),
    ...errorResponses(400, 401, 403, 409, 413),
  },
});

export const list = createRoute({
  path: '/api/v1/accounts',
  method: 'get',
  tags,
  summary: 'List accounts (admin)',
  responses: { 200: jsonContent(z.array(AccountSchema), 'Every account'), ...errorResponses(401, 403) },
});

export const me = createRoute({
  path: '/api/v1/accounts/me',
  method: 'get',
  tags,
  summary: 'The caller\'s own account, and the id of the key in use',
  responses: { 200: jsonContent(CurrentAccountSchema, 'The account'), ...errorResponses(401) },
});

export const update = createRoute({
  path: '/api/v1/accounts/{id}',
  method: 'patch',
  tags,
  summary: 'Disable or enable an account (admin): a disabled account\'s keys get 401 at once',
  request: { params: IdParamsSchema, body: jsonBody(UpdateAccountSchema) },
  responses: { 200: jsonContent(AccountSchema, 'The account'), ...errorResponses(400, 401, 403, 404, 409, 413) },
});

export const listKeys = createRoute({
  path: '/api/v1/accounts/{accountId}/keys',
  method: 'get',
  tags,
  summary: 'List an account\'s API keys (never the keys themselves); `me` for your own, an id for an admin',
  request: { params: AccountRefParamsSchema },
  responses: { 200: jsonContent(z.array(ApiKeySchema), 'The keys, oldest first, revoked ones included'), ...errorResponses(400, 401, 403, 404) },
});

export const createKey = createRoute({
  path: '/api/v1/accounts/{accountId}/keys',
  method: 'post',
  tags,
  summary: 'Add an API key (rotation: add, switch clients over, revoke the old one); the key is in the answer, once',
  request: { params: AccountRefParamsSchema, body: optionalJsonBody(CreateApiKeySchema) },
  responses: { 201: jsonContent(CreatedApiKeySchema, 'The new key'), ...errorResponses(400, 401, 403, 404, 413) },
});

export const revokeKey = createRoute({
  path: '/api/v1/accounts/{accountId}/keys/{keyId}',
  method: 'delete',
  tags,
  summary: 'Revoke an API key: refused (401) from the next request on; not the last live key (409 LAST_API_KEY) nor the key of this request (409 API_KEY_IN_USE)',
  request: { params: AccountKeyParamsSchema },
  responses: { 200: jsonContent(ApiKeySchema, 'The key, revoked'), ...errorResponses(400, 401, 403, 404, 409) },
});

export const getCloudStackKeys = createRoute({
  path: '/api/v1/accounts/{accountId}/cloudstack-keys',
  method: 'get',
  tags,
  summary: 'The account\'s CloudStack key pair (/client/api), without its secret',
  request: { params: AccountRefParamsSchema },
  responses: { 200: jsonContent(CloudStackKeyInfoSchema, 'The pair\'s API key'), ...errorResponses(400, 401, 403, 404) },
});

export const issueCloudStackKeys = createRoute({
  path: '/api/v1/accounts/{accountId}/cloudstack-keys',
  method: 'post',
  tags,
  summary: 'Issue a new CloudStack key pair (the previous one stops working); the secret is in the answer, once',
  request: { params: AccountRefParamsSchema },
  responses: { 201: jsonContent(IssuedCloudStackKeysSchema, 'The new pair'), ...errorResponses(400, 401, 403, 404) },
});

export const revokeCloudStackKeys = createRoute({
  path: '/api/v1/accounts/{accountId}/cloudstack-keys',
  method: 'delete',
  tags,
  summary: 'Revoke the account\'s CloudStack key pair: its signatures get 401 from the next request on',
  request: { params: AccountRefParamsSchema },
  responses: { 200: jsonContent(CloudStackKeyInfoSchema, 'The revoked pair\'s API key'), ...errorResponses(400, 401, 403, 404) },
});

export type CreateRoute = typeof create;
export type GetCloudStackKeysRoute = typeof getCloudStackKeys;
export type IssueCloudStackKeysRoute = typeof issueCloudStackKeys;
export type RevokeCloudStackKeysRoute = typeof revokeCloudStackKeys;
export type ListRoute = typeof list;
export type MeRoute = typeof me;
export type UpdateRoute = typeof update;
export type ListKeysRoute = typeof listKeys;
export type CreateKeyRoute = typeof createKey;
export type RevokeKeyRoute = typeof revokeKey;
