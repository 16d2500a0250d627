import { z } from '@hono/zod-openapi';
import { HypervisorSchema } from './common.js';

export const IsoSchema = z
  .object({
    id: z.string(),
    name: z.string(),
    osType: z.string(),
    hasImage: z.boolean().openapi({ description: 'Its image file is on this server: it can go into a running VM' }),
  })
  .openapi('Iso');
export const ServiceOfferingSchema = z
  .object({ id: z.string(), name: z.string(), cpuCount: z.number().int(), memoryMb: z.number().int() })
  .openapi('ServiceOffering');
export const HostSchema = z
  .object({
    id: z.string(),
    name: z.string(),
    hypervisor: HypervisorSchema,
    address: z.string(),
    connected: z.boolean().openapi({ description: 'KVM: the host has a libvirt this server reaches; VMs are placed only on connected hosts' }),
    accelerator: z.enum(['kvm', 'qemu']).nullable().openapi({ description: 'What its VMs run under (qemu: TCG), as its probe found; null until probed' }),
    acceleratorReason: z.string().nullable().openapi({ description: 'What the probe saw' }),
    hostWorkerLastPoll: z.string().nullable().openapi({
      description:
        "KVM: when the host's worker last polled its task queue (Temporal keeps pollers of the last few minutes); null: no worker polled it lately, so its VM actions wait VM_HOST_TIMEOUT_SECONDS and fail (and always null with KVM_COMPUTE=none or XenServer)",
    }),
  })
  .openapi('Host');
export const StoragePoolSchema = z
  .object({ id: z.string(), name: z.string(), hypervisor: HypervisorSchema, path: z.string() })
  .openapi('StoragePool');
