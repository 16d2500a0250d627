import { z } from '@hono/zod-openapi';
import { TimestampSchema } from './common.js';

export const RoleSchema = z.enum(['admin', 'user']);

export const AccountSchema = z
  .object({
    id: z.string(),
    name: z.string(),
    role: RoleSchema,
    disabled: z.boolean().openapi({ description: 'A disabled account\'s keys and CloudStack signatures are refused (401)' }),
    createdAt: TimestampSchema,
  })
  .openapi('Account');

export const CurrentAccountSchema = AccountSchema.extend({
  apiKeyId: z.string().openapi({ description: 'The id of the API key this request was made with' }),
}).openapi('CurrentAccount');

export const ApiKeySchema = z
  .object({
    id: z.string(),
    accountId: z.string(),
    name: z.string(),
    createdAt: TimestampSchema,
    lastUsedAt: TimestampSchema.nullable().openapi({ description: 'Last request made with it (updated at most once a minute)' }),
    revokedAt: TimestampSchema.nullable(),
  })
  .openapi('ApiKey', { description: 'An API key without its secret: only its hash is stored' });

export const CreatedApiKeySchema = ApiKeySchema.extend({
  apiKey: z.string().openapi({ description: 'The key itself: shown this once, only its hash is stored' }),
}).openapi('CreatedApiKey');

export const CreateApiKeySchema = z
  .strictObject({
    name: z
      .string({ error: 'must be a string' })
      .trim()
      .min(1, 'must not be empty')
      .max(64, 'must be at most 64 characters')
      .regex(/^[^\x00-\x1f\x7f-\x9f]*$/, 'must not contain control characters')
      .optional()
      .openapi({ description: 'A label to tell keys apart (default: key-<time>)' }),
  })
  .openapi('CreateApiKey');

export const UpdateAccountSchema = z
  .strictObject({
    disabled: z.boolean({ error: 'must be a boolean' }).openapi({ description: 'true: refuse the account\'s keys at once; false: accept them again' }),
  })
  .openapi('UpdateAccount');

export const CloudStackKeyInfoSchema = z
  .object({
    apiKey: z.string().openapi({ description: 'The CloudStack API key (the apiKey parameter of /client/api requests)' }),
    createdAt: TimestampSchema,
  })
  .openapi('CloudStackKeyInfo', { description: 'An account\'s CloudStack key pair without its secret' });

export const IssuedCloudStackKeysSchema = CloudStackKeyInfoSchema.extend({
  secretKey: z.string().openapi({ description: 'The secret that signs the requests: shown this once' }),
}).openapi('IssuedCloudStackKeys');

/** `me` (the caller's own account) or an account id (admin). */
export const AccountRefParamsSchema = z.object({
  accountId: z
    .union([z.literal('me'), z.guid()], { error: 'must be "me" or a UUID' })
    .openapi({ param: { name: 'accountId', in: 'path' }, description: '`me`, or an account id (admin)', example: 'me' }),
});

export const AccountKeyParamsSchema = AccountRefParamsSchema.extend({
  keyId: z.guid({ error: 'must be a UUID' }).openapi({ param: { name: 'keyId', in: 'path' } }),
});

export const CreatedAccountSchema = AccountSchema.extend({
  apiKey: z.string().openapi({ description: 'Shown once; only its hash is stored' }),
  apiKeyId: z.string().openapi({ description: 'The id of that key (GET /api/v1/accounts/{accountId}/keys lists it)' }),
  cloudstack: z
    .object({
      apiKey: z.string().openapi({ description: 'CloudStack API key (apiKey parameter of /client/api requests)' }),
      secretKey: z.string().openapi({ description: 'CloudStack secret key that signs the requests; shown here once (registerUserKeys renews the pair)' }),
    })
    .openapi('CloudStackKeys', { description: "The account's CloudStack key pair, for CloudStack's clients on /client/api" }),
}).openapi('CreatedAccount');

export const CreateAccountSchema = z
  .strictObject({
    name: z
      .string({ error: 'must be a string' })
      .min(1, 'must not be empty')
      .max(64, 'must be at most 64 characters')
      .regex(/^[A-Za-z0-9][A-Za-z0-9._@-]*$/, 'letters, digits and . _ @ - only'),
    role: RoleSchema.default('user'),
  })
  .openapi('CreateAccount');
