import { createRoute, z } from '@hono/zod-openapi';
import { jsonContent } from '../../schemas/common.js';

const HealthSchema = z
  .object({ status: z.enum(['ok', 'unavailable']), checks: z.record(z.string(), z.boolean()) })
  .openapi('Health');

export const healthz = createRoute({
  path: '/healthz',
  method: 'get',
  tags: ['Health'],
  summary: 'Ready when the database, Temporal and the workers are',
  security: [],
  responses: {
    200: jsonContent(HealthSchema, 'Everything is ready'),
    503: jsonContent(HealthSchema, 'Something is not ready; `checks` says what'),
  },
});

export type HealthzRoute = typeof healthz;
