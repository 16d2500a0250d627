import { z } from '@hono/zod-openapi';
import { SNAPSHOT_STATES } from '../../domain/snapshot-states.js';
import { NameSchema, PageLimitSchema, TimestampSchema, uuid } from './common.js';

export const SnapshotStateSchema = z.enum(SNAPSHOT_STATES);

export const SnapshotSchema = z
  .object({
    id: z.string(),
    name: z.string(),
    volumeId: z.string(),
    vmId: z.string().nullable(),
    accountId: z.string(),
    state: SnapshotStateSchema,
    asyncBackup: z.boolean(),
    createdAt: TimestampSchema,
    updatedAt: TimestampSchema,
    workflowId: z.string(),
    backup: z.object({
      attempts: z.number().int(),
      maxAttempts: z.number().int(),
      retryIntervalSeconds: z.number().int(),
      bytesDone: z.number().int(),
      bytesTotal: z.number().int(),
      lastError: z.string().nullable(),
      nextAttemptAt: TimestampSchema.nullable(),
      kind: z.enum(['full', 'incremental']).nullable().openapi({ description: 'full copy, or a delta on an earlier backup of the volume' }),
      parentSnapshotId: z.string().nullable().openapi({ description: 'the snapshot whose backup this one is a delta on' }),
      bytesWritten: z.number().int().nullable().openapi({ description: 'bytes of the backup file in the image store (a delta: the delta only)' }),
      chainLength: z.number().int().nullable().openapi({ description: 'backup files a restore reads: 1 for a full backup' }),
    }),
    storeRefs: z.array(
      z.object({
        role: z.enum(['Primary', 'Image']),
        storeId: z.string(),
        installPath: z.string().optional().openapi({ description: 'Where the copy lives (admins only)' }),
        state: z.enum(['Allocated', 'Creating', 'Ready', 'Failed', 'Destroyed']).openapi({
          description: 'Failed: an Image copy whose backup never finished, on a snapshot in Error (storage GC removes it)',
        }),
        sizeBytes: z.number().int().nullable(),
        checksum: z.string().nullable(),
        parentSnapshotId: z.string().nullable(),
        chainLength: z.number().int(),
      }),
    ),
  })
  .openapi('Snapshot');

export const CreateSnapshotSchema = z
  .strictObject({
    name: NameSchema.optional(),
    asyncBackup: z.boolean({ error: 'must be a boolean' }).default(false).openapi({
      description: 'true: answer once the snapshot exists on primary storage; false (default): answer once it is backed up',
    }),
  })
  .openapi('CreateSnapshot');

export const CreateVmSnapshotsSchema = z
  .strictObject({
    volumeIds: z
      .array(uuid('A volume attached to the VM'))
      .min(1, 'at least one volume')
      .max(16, 'at most 16 volumes')
      .optional()
      .openapi({ description: 'The volumes to snapshot together; default: every volume attached to the VM' }),
    name: NameSchema.optional().openapi({ description: "Each snapshot's name is this, then a dash and its volume's name" }),
    asyncBackup: z.boolean({ error: 'must be a boolean' }).default(false).openapi({
      description: 'true: answer once the snapshots exist on primary storage; false (default): once each is backed up',
    }),
  })
  .openapi('CreateVmSnapshots');

export const VmSnapshotsSchema = z
  .object({
    vmId: z.string(),
    instant: z.enum(['live', 'offline']).openapi({
      description: "live: the running VM's QEMU took every snapshot in one transaction; offline: no QEMU writes to its disks (a stopped VM, or VMs kept as records), taken one after the other",
    }),
    snapshots: z.array(SnapshotSchema),
  })
  .openapi('VmSnapshots');

export const IdempotencyHeadersSchema = z.object({
  'Idempotency-Key': z
    .string()
    .min(1, 'must not be empty')
    .max(255, 'must be at most 255 characters')
    .regex(/^[\x21-\x7e]+$/, 'must be printable ASCII without spaces')
    .optional()
    .openapi({ description: 'Retrying with the same key and body returns the same snapshot; another body with it is 422. Keys expire after idempotency.key.ttl seconds (default 24 h)' }),
});

export const SnapshotListQuerySchema = z.object({
  volumeId: uuid('Only snapshots of this volume').optional(),
  vmId: uuid('Only snapshots taken of a volume attached to this VM (also after it was destroyed)').optional(),
  state: SnapshotStateSchema.optional().openapi({ description: 'Default: every state but Destroyed' }),
  q: z
    .string()
    .trim()
    .min(1, 'must not be empty')
    .max(128, 'must be at most 128 characters')
    .regex(/^[^\x00-\x1f\x7f-\x9f]*$/, 'must not contain control characters')
    .optional()
    .openapi({ description: 'Text: snapshots whose name contains it (case-insensitive), or whose id it is' }),
  limit: PageLimitSchema,
  after: uuid('Cursor: the id of the previous page\'s last snapshot (its X-Next-Cursor)').optional(),
});

export const CreateVolumeFromSnapshotSchema = z
  .strictObject({
    name: NameSchema.optional(),
    poolId: uuid('Storage pool; default: the hypervisor\'s first pool').optional(),
  })
  .openapi('CreateVolumeFromSnapshot');
