import { createRoute, z } from '@hono/zod-openapi';
import { AccountSchema, CreateAccountSchema, CreatedAccountSchema } from '../../schemas/account.js';
import { errorResponses, jsonBody, jsonContent } from '../../schemas/common.js';

const tags = ['Accounts'];

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
  path: '/api/v1/account',
  method: 'get',
  tags,
  summary: 'The account of the API key (who is signed in)',
  responses: { 200: jsonContent(AccountSchema, 'The caller\'s account'), ...errorResponses(401) },
});

export type CreateRoute = typeof create;
export type MeRoute = typeof me;
export type ListRoute = typeof list;
