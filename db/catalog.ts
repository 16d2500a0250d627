import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import type { Queryable } from './pool.js';

/** XenServer primary storage to seed: the pool master's host name and its SR uuids. */
export interface XenServerCatalog {
  hostAddress: string;
  srUuids: string[];
}

/** A seeded storage location whose path in the database is not the one this process would have seeded. */
export interface CatalogPathMismatch {
  table: 'storage_pools' | 'image_stores';
  name: string;
  inDatabase: string;
  fromThisProcess: string;
}

/**
 * Seeds the read-only catalogs on first start: storage pools, the image store, hosts, offerings, ISOs.
 * Existing rows are kept, so the first process's data directory decides the KVM paths; the ones that differ
 * from this process's are returned (the caller warns: a second data directory would otherwise go unnoticed).
 */
export async function seedCatalog(db: Queryable, dataDir: string, xen?: XenServerCatalog): Promise<CatalogPathMismatch[]> {
  const insert = (table: string, cols: string[], values: unknown[]) =>
    db.query(
      `INSERT INTO ${table} (id, ${cols.join(', ')}) VALUES ($1, ${cols.map((_, i) => `$${i + 2}`).join(', ')})
       ON CONFLICT (name) DO NOTHING`,
      [randomUUID(), ...values],
    );
  const paths = [
    { table: 'storage_pools', name: 'kvm-primary-1', path: join(dataDir, 'primary', 'kvm-primary-1') },
    { table: 'storage_pools', name: 'kvm-primary-2', path: join(dataDir, 'primary', 'kvm-primary-2') },
    { table: 'image_stores', name: 'secondary-1', path: join(dataDir, 'secondary') },
  ] as const;
  for (const { table, name, path } of paths) {
    if (table === 'storage_pools') await insert(table, ['name', 'hypervisor', 'path'], [name, 'KVM', path]);
    else await insert(table, ['name', 'path'], [name, path]);
  }
  await insert('hosts', ['name', 'hypervisor', 'address'], ['kvm-host-1', 'KVM', '127.0.0.1']);
  await insert('hosts', ['name', 'hypervisor', 'address'], ['kvm-host-2', 'KVM', '127.0.0.2']);
  await insert('service_offerings', ['name', 'cpu_count', 'memory_mb'], ['Small Instance', 1, 1024]);
  await insert('service_offerings', ['name', 'cpu_count', 'memory_mb'], ['Medium Instance', 2, 4096]);
  await insert('service_offerings', ['name', 'cpu_count', 'memory_mb'], ['Large Instance', 4, 8192]);
  await insert('isos', ['name', 'os_type'], ['debian-12-netinst', 'Debian GNU/Linux 12 (64-bit)']);
  await insert('isos', ['name', 'os_type'], ['ubuntu-24.04-live-server', 'Ubuntu 24.04 (64-bit)']);
  if (xen) {
    await insert('hosts', ['name', 'hypervisor', 'address'], ['xen-host-1', 'XenServer', xen.hostAddress]);
    for (const [i, srUuid] of xen.srUuids.entries()) {
      // A XenServer pool's "path" is its SR uuid; keep it current if the operator points at another SR.
      await insert('storage_pools', ['name', 'hypervisor', 'path'], [`xen-sr-${i + 1}`, 'XenServer', srUuid]);
      await db.query(`UPDATE storage_pools SET path = $2 WHERE name = $1 AND hypervisor = 'XenServer'`, [`xen-sr-${i + 1}`, srUuid]);
    }
  }
  const mismatches: CatalogPathMismatch[] = [];
  for (const p of paths) {
    const { rows } = await db.query<{ path: string }>(`SELECT path FROM ${p.table} WHERE name = $1`, [p.name]);
    const inDatabase = rows[0]?.path;
    if (inDatabase !== undefined && inDatabase !== p.path) mismatches.push({ table: p.table, name: p.name, inDatabase, fromThisProcess: p.path });
  }
  return mismatches;
}

export interface ImageStore {
  id: string;
  path: string;
}

/** The image store backups go to (one store; more would be chosen here). */
export async function defaultImageStore(db: Queryable): Promise<ImageStore> {
  const { rows } = await db.query<ImageStore>('SELECT id, path FROM image_stores ORDER BY created, name LIMIT 1');
  if (!rows[0]) throw new Error('no image store is configured');
  return rows[0];
}

/**
 * Connects a worker's KVM host (KVM_HOST, the seeded kvm-host-1 by default) to its libvirt (docs/design.md §15):
 * kept current, as the storage paths are, so a changed LIBVIRT_URI takes effect at the next start. Returns the
 * URI it had.
 */
export async function connectKvmHost(db: Queryable, name: string, uri: string): Promise<{ changed: boolean; previous: string | null }> {
  // A host not in the catalog is added (a second host worker, say); its address is its URI's host part.
  await db.query(
    `INSERT INTO hosts (id, name, hypervisor, address) VALUES ($1, $2, 'KVM', $3) ON CONFLICT (name) DO NOTHING`,
    [randomUUID(), name, hostAddressOf(uri)],
  );
  const { rows } = await db.query<{ previous: string | null; hypervisor: string }>(
    `UPDATE hosts h SET uri = $2 FROM (SELECT id, uri AS previous, hypervisor FROM hosts WHERE name = $1) old
      WHERE h.id = old.id AND old.hypervisor = 'KVM' RETURNING old.previous, old.hypervisor`,
    [name, uri],
  );
  if (rows.length === 0) throw new Error(`host ${name} (KVM_HOST) is not a KVM host in the catalog`);
  const previous = rows[0]!.previous ?? null;
  return { changed: previous !== uri, previous };
}

/** The address part of a libvirt URI (qemu+ssh://user@host/system → host); 127.0.0.1 for a local one. */
function hostAddressOf(uri: string): string {
  try {
    return new URL(uri).hostname || '127.0.0.1';
  } catch {
    return '127.0.0.1';
  }
}

/** Registers (or moves) an ISO whose image file is on this server. */
export async function registerIsoImage(db: Queryable, name: string, osType: string, path: string): Promise<void> {
  await db.query(
    `INSERT INTO isos (id, name, os_type, path) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET path = EXCLUDED.path`,
    [randomUUID(), name, osType, path],
  );
}

/** Records what a host's accelerator probe found. */
export async function setHostAccelerator(db: Queryable, hostName: string, accelerator: 'kvm' | 'qemu', reason: string): Promise<void> {
  await db.query('UPDATE hosts SET accelerator = $2, accelerator_reason = $3 WHERE name = $1', [hostName, accelerator, reason]);
}
