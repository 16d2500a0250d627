import { z } from '@hono/zod-openapi';
import { TimestampSchema } from './common.js';

export const RoleSchema = z.enum(['admin', 'user']);

export const AccountSchema = z
  .object({ id: z.string(), name: z.string(), role: RoleSchema, createdAt: TimestampSchema })
  .openapi('Account');

export const CreatedAccountSchema = AccountSchema.extend({
  apiKey: z.string().openapi({ description: 'Shown once; only its hash is stored' }),
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
