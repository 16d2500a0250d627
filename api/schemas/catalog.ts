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
export const HostSchema = z.object({ id: z.string(), name: z.string(), hypervisor: HypervisorSchema, address: z.string() }).openapi('Host');
export const StoragePoolSchema = z
  .object({ id: z.string(), name: z.string(), hypervisor: HypervisorSchema, path: z.string() })
  .openapi('StoragePool');
