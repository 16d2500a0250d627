import { z } from '@hono/zod-openapi';
import { VM_ACTIONS } from '../../domain/policy.js';
import { HypervisorSchema, NameSchema, PageLimitSchema, SizeBytesSchema, TimestampSchema, uuid } from './common.js';
import { VolumeSchema } from './volume.js';

export const VmStateSchema = z.enum(['Starting', 'Running', 'Stopping', 'Stopped', 'Destroyed']).openapi({
  description: 'Starting and Stopping: the host is being asked (KVM: libvirt); the row says what the host reported last',
});

export const VmSchema = z
  .object({
    id: z.string(),
    accountId: z.string(),
    name: z.string(),
    hypervisor: HypervisorSchema,
    state: VmStateSchema,
    serviceOfferingId: z.string().nullable(),
    isoId: z.string().nullable(),
    hostId: z.string().nullable(),
    stateSince: TimestampSchema,
    lastError: z.string().nullable().openapi({ description: 'Why the last start or stop failed (the hypervisor\'s words), or null' }),
    pendingDisk: z
      .object({ op: z.enum(['attach', 'detach']), volumeId: z.string(), target: z.string() })
      .nullable()
      .openapi({ description: 'A hot-plug in progress on the running VM (its other actions wait for it), or null' }),
    pendingDiskSince: TimestampSchema.nullable(),
    accelerator: z.enum(['kvm', 'qemu']).nullable().openapi({ description: 'What its QEMU last ran under (qemu: TCG); null if it never started on libvirt' }),
    createdAt: TimestampSchema,
    updatedAt: TimestampSchema,
    volumes: z.array(VolumeSchema).openapi({ description: 'Attached volumes, ROOT first' }),
  })
  .openapi('VirtualMachine');

export const CreateVmSchema = z
  .strictObject({
    name: NameSchema,
    hypervisor: HypervisorSchema,
    serviceOffering: z.string().trim().min(1).max(128).optional().openapi({ description: 'Offering id or name; default: the first offering' }),
    rootDiskSizeBytes: SizeBytesSchema,
    dataDisks: z
      .array(z.strictObject({ name: NameSchema.optional(), sizeBytes: SizeBytesSchema }), { error: 'must be an array' })
      .max(8, 'at most 8 data disks')
      .optional(),
    start: z.boolean().optional().openapi({ description: 'Start the VM once created (CloudStack startvm); default true' }),
  })
  .openapi('CreateVirtualMachine');

const bare = <A extends string>(action: A) => z.strictObject({ action: z.literal(action) });

/** `{action, ...params}`; an unknown action is a 400 naming the field `action`. */
export const VmActionSchema = z
  .discriminatedUnion(
    'action',
    [
      bare('start'),
      z.strictObject({
        action: z.literal('stop'),
        forced: z.boolean().optional().openapi({ description: 'Power off at once instead of asking the guest to shut down' }),
      }),
      bare('reboot'),
      bare('destroy'),
      bare('reinstall'),
      bare('detach-iso'),
      z.strictObject({ action: z.literal('attach-iso'), isoId: uuid('ISO to attach') }),
      z.strictObject({ action: z.literal('attach-volume'), volumeId: uuid('Detached DATADISK volume to attach') }),
      z.strictObject({ action: z.literal('detach-volume'), volumeId: uuid('DATADISK volume to detach') }),
      z.strictObject({ action: z.literal('change-service-offering'), serviceOfferingId: uuid('New service offering') }),
      z.strictObject({ action: z.literal('migrate'), hostId: uuid('Target host') }),
    ],
    { error: `must be one of ${VM_ACTIONS.join(', ')}` },
  )
  .openapi('VirtualMachineAction');

export const AllowedActionsSchema = z
  .object({
    vmId: z.string(),
    inFlightSnapshots: z.array(
      z.object({ snapshotId: z.string(), volumeId: z.string(), volumeType: z.enum(['ROOT', 'DATADISK']), vmId: z.string().nullable() }),
    ),
    actions: z.array(
      z.object({
        action: z.enum(VM_ACTIONS),
        allowed: z.boolean(),
        reason: z.string().nullable(),
        snapshotId: z.string().nullable(),
        volumeId: z.string().nullable(),
      }),
    ),
  })
  .openapi('AllowedActions');

export const VmListQuerySchema = z.object({
  state: VmStateSchema.optional(),
  limit: PageLimitSchema,
  after: uuid('Cursor: the id of the previous page\'s last VM (its X-Next-Cursor)').optional(),
});

export const VmConsoleQuerySchema = z.object({
  lines: z.coerce
    .number({ error: 'must be a number' })
    .int('must be an integer')
    .min(1, 'must be at least 1')
    .max(1000, 'must be at most 1000')
    .default(100)
    .openapi({ description: 'How many of the last lines (default 100, at most 1000)' }),
});

export const VmConsoleSchema = z
  .object({
    vmId: z.string(),
    lines: z.array(z.string()).openapi({ description: "The last lines of the VM's serial console, oldest first" }),
    truncated: z.boolean().openapi({ description: 'Earlier lines exist' }),
    updatedAt: TimestampSchema.nullable().openapi({ description: 'When the console last wrote; null if it never has' }),
  })
  .openapi('VirtualMachineConsole');
