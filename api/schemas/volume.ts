import { z } from '@hono/zod-openapi';
import { HypervisorSchema, NameSchema, PageLimitSchema, SizeBytesSchema, TimestampSchema, uuid } from './common.js';

export const VolumeTypeSchema = z.enum(['ROOT', 'DATADISK']);
export const VolumeStateSchema = z.enum(['Allocated', 'Creating', 'Ready', 'Migrating', 'Resizing', 'Reverting', 'Error', 'Destroyed']);

export const VolumeSchema = z
  .object({
    id: z.string(),
    accountId: z.string(),
    vmId: z.string().nullable(),
    name: z.string(),
    type: VolumeTypeSchema,
    hypervisor: HypervisorSchema,
    sizeBytes: z.number().int(),
    poolId: z.string(),
    path: z.string().optional().openapi({ description: 'The image on primary storage (admins only: host paths are never shown to other accounts)' }),
    format: z.enum(['qcow2', 'vhd']),
    state: VolumeStateSchema,
    deviceId: z.number().int().nullable(),
    createdAt: TimestampSchema,
    updatedAt: TimestampSchema,
  })
  .openapi('Volume');

export const CreateVolumeSchema = z
  .strictObject({
    name: NameSchema,
    sizeBytes: SizeBytesSchema,
    hypervisor: HypervisorSchema.optional(),
    poolId: uuid('Storage pool; default: the hypervisor\'s first pool').optional(),
  })
  .openapi('CreateVolume');

export const ResizeVolumeSchema = z
  .strictObject({
    sizeBytes: SizeBytesSchema,
    shrinkOk: z.boolean({ error: 'must be a boolean' }).optional().openapi({ description: 'Required to shrink (shrinking loses data)' }),
  })
  .openapi('ResizeVolume');

export const MigrateVolumeSchema = z.strictObject({ poolId: uuid('Target storage pool (same hypervisor)') }).openapi('MigrateVolume');

export const VolumeListQuerySchema = z.object({
  vmId: uuid('Only volumes attached to this VM').optional(),
  type: VolumeTypeSchema.optional(),
  state: VolumeStateSchema.optional().openapi({ description: 'Default: every state but Destroyed' }),
  limit: PageLimitSchema,
  after: uuid('Cursor: the id of the previous page\'s last volume (its X-Next-Cursor)').optional(),
});
