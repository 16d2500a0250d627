import { createRoute } from '@hono/zod-openapi';
import { errorResponses, jsonContent } from '../../schemas/common.js';
import { StorageGcResultSchema } from '../../schemas/storage.js';

export const runGc = createRoute({
  path: '/api/v1/storage/gc',
  method: 'post',
  tags: ['Storage'],
  summary: 'Run storage GC now (admin) and answer what it cleaned',
  description: 'Reconciles snapshots whose workflow is gone, cleans Error snapshots and removes orphan backup files. Waits for the run.',
  responses: { 200: jsonContent(StorageGcResultSchema, 'What the run cleaned'), ...errorResponses(401, 403) },
});

export type RunGcRoute = typeof runGc;
