import { listHosts, listIsos, listServiceOfferings, listStoragePools } from '../db/catalog-queries.js';
import type { Pool } from '../db/pool.js';

/** The read-only catalogs seeded at first start (db/catalog.ts). */
export function createCatalogService(deps: { pool: Pool }) {
  const { pool } = deps;
  return {
    isos: () => listIsos(pool),
    serviceOfferings: () => listServiceOfferings(pool),
    hosts: () => listHosts(pool),
    storagePools: () => listStoragePools(pool),
  };
}

export type CatalogService = ReturnType<typeof createCatalogService>;
