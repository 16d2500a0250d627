import { createRoute, z } from '@hono/zod-openapi';
import { errorResponses, jsonBody, jsonContent } from '../../schemas/common.js';
import { ConfigurationNameParamsSchema, ConfigurationSchema, UpdateConfigurationSchema } from '../../schemas/configuration.js';

const tags = ['Configuration'];

export const list = createRoute({
  path: '/api/v1/configurations',
  method: 'get',
  tags,
  summary: 'List the runtime settings',
  responses: { 200: jsonContent(z.array(ConfigurationSchema), 'Every setting'), ...errorResponses(401) },
});

export const update = createRoute({
  path: '/api/v1/configurations/{name}',
  method: 'put',
  tags,
  summary: 'Change a setting (admin); applies to snapshots created afterwards',
  request: { params: ConfigurationNameParamsSchema, body: jsonBody(UpdateConfigurationSchema) },
  responses: {
    200: jsonContent(ConfigurationSchema, 'The setting as stored'),
    ...errorResponses(400, 401, 403, 404, 413),
  },
});

export type ListRoute = typeof list;
export type UpdateRoute = typeof update;
