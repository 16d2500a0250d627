import { createRoute } from '@hono/zod-openapi';
import { errorResponses, jsonContent } from '../../schemas/common.js';
import { BackupScrubResultSchema, StorageGcResultSchema } from '../../schemas/storage.js';

export const runGc = createRoute({
  path: '/api/v1/storage/gc',
  method: 'post',
  tags: ['Storage'],
  summary: 'Run storage GC now (admin) and answer what it cleaned',
  description: 'Reconciles snapshots whose workflow is gone, cleans Error snapshots and removes orphan backup files. Waits for the run.',
  responses: { 200: jsonContent(StorageGcResultSchema, 'What the run cleaned'), ...errorResponses(401, 403) },
});

export type RunGcRoute = typeof runGc;

export const runScrub = createRoute({
  path: '/api/v1/storage/scrub',
  method: 'post',
  tags: ['Storage'],
  summary: 'Run the backup scrub now (admin) and answer what it found',
  description:
    'Re-hashes every stored backup not found matching within backup.scrub.reverify against the checksum recorded when it was ' +
    'written, at backup.scrub.rate; a mismatch is marked as a fault on the backup and every backup whose chain holds it, ' +
    'with an ERROR event for each. Waits for the run.',
  responses: { 200: jsonContent(BackupScrubResultSchema, 'What the run found'), ...errorResponses(401, 403) },
});
