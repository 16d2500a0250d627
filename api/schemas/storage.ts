import { z } from '@hono/zod-openapi';
import { SnapshotStateSchema } from './snapshot.js';

/** What one storage GC run did (workflows/storage-gc-workflow.ts StorageGcResult). */
export const StorageGcResultSchema = z
  .object({
    trigger: z.enum(['schedule', 'manual']),
    reconciled: z.array(
      z.object({
        snapshotId: z.string(),
        volumeId: z.string(),
        workflowId: z.string(),
        previousState: SnapshotStateSchema,
        workflowStatus: z.string(),
        reason: z.string(),
      }),
    ),
    destroyed: z.array(
      z.object({
        snapshotId: z.string(),
        volumeId: z.string(),
        removedFiles: z.array(z.string()),
        primarySnapshotDeleted: z.boolean(),
        storeRefsDeleted: z.number().int(),
      }),
    ),
    orphanFiles: z.array(z.object({ storeId: z.string(), path: z.string(), snapshotId: z.string(), reason: z.string() })),
    failures: z.array(
      z.object({
        step: z.enum(['reconcile', 'clean', 'orphans']),
        snapshotId: z.string().optional(),
        path: z.string().optional(),
        error: z.string(),
      }),
    ),
    deferred: z.array(z.string()),
    reconcilerRan: z.boolean(),
  })
  .openapi('StorageGcResult');

/** What one backup scrub run found (workflows/backup-scrub-workflow.ts BackupScrubResult). */
export const BackupScrubResultSchema = z
  .object({
    trigger: z.enum(['schedule', 'manual']),
    verified: z.number().int().openapi({ description: 'Backups that matched their recorded checksum' }),
    bytesRead: z.number().int(),
    faulty: z.array(z.object({ snapshotId: z.string(), fault: z.string(), dependants: z.array(z.string()) })),
    failures: z.array(z.object({ snapshotId: z.string(), error: z.string() })),
  })
  .openapi('BackupScrubResult');
