import { z } from '@hono/zod-openapi';
import { TimestampSchema } from './common.js';

export const ConfigurationSchema = z
  .object({
    name: z.string(),
    value: z.number(),
    defaultValue: z.number(),
    description: z.string(),
    updatedAt: TimestampSchema,
  })
  .openapi('Configuration');

export const ConfigurationNameParamsSchema = z.object({
  name: z.string().max(128).openapi({ param: { name: 'name', in: 'path' }, example: 'backup.retry.interval' }),
});

export const UpdateConfigurationSchema = z
  .strictObject({ value: z.union([z.number(), z.string(), z.boolean()], { error: 'must be a number (or a boolean for a switch)' }) })
  .openapi('UpdateConfiguration');
