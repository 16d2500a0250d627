import { createRoute, z } from '@hono/zod-openapi';
import { HostSchema, IsoSchema, ServiceOfferingSchema, StoragePoolSchema } from '../../schemas/catalog.js';
import { errorResponses, jsonContent } from '../../schemas/common.js';

const tags = ['Catalogs'];

const listOf = <T extends z.ZodType>(path: string, schema: T, what: string) =>
  createRoute({
    path,
    method: 'get',
    tags,
    summary: `List ${what} (read-only, seeded at first start)`,
    responses: { 200: jsonContent(z.array(schema), `Every ${what.replace(/s$/, '')}`), ...errorResponses(401) },
  });

export const isos = listOf('/api/v1/isos', IsoSchema, 'ISOs');
export const serviceOfferings = listOf('/api/v1/service-offerings', ServiceOfferingSchema, 'service offerings');
export const hosts = listOf('/api/v1/hosts', HostSchema, 'hosts');
export const storagePools = listOf('/api/v1/storage-pools', StoragePoolSchema, 'storage pools');
