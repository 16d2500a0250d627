import type { Queryable } from './pool.js';
import type { Hypervisor } from './vms.js';

/** A primary storage pool. */
export interface StoragePoolRecord {
  id: string;
  name: string;
  hypervisor: Hypervisor;
  path: string;
}

export interface HostRecord {
  id: string;
  name: string;
  hypervisor: Hypervisor;
  address: string;
  /** The host's libvirt URI (KVM), or null: not connected, so no VM starts there. Not shown to users. */
  uri: string | null;
  /** What its VMs run under, as its probe found (null: not probed), and why. */
  accelerator: 'kvm' | 'qemu' | null;
  acceleratorReason: string | null;
}

export interface ServiceOfferingRecord {
  id: string;
  name: string;
  cpuCount: number;
  memoryMb: number;
}

export interface IsoRecord {
  id: string;
  name: string;
  osType: string;
  /** Whether its image file is on this server (the file's path is not shown). */
  hasImage: boolean;
}

const ORDER = 'ORDER BY created, name';
const HOST_COLUMNS = 'id, name, hypervisor, address, uri, accelerator, accelerator_reason AS "acceleratorReason"';

/** Storage pools, first-created first (the default pool of a hypervisor is its first). */
export async function listStoragePools(db: Queryable, hypervisor?: Hypervisor): Promise<StoragePoolRecord[]> {
  const { rows } = await db.query<StoragePoolRecord>(
    `SELECT id, name, hypervisor, path FROM storage_pools WHERE ($1::text IS NULL OR hypervisor = $1) ${ORDER}`,
    [hypervisor ?? null],
  );
  return rows;
}

export async function findStoragePool(db: Queryable, id: string): Promise<StoragePoolRecord | undefined> {
  const { rows } = await db.query<StoragePoolRecord>('SELECT id, name, hypervisor, path FROM storage_pools WHERE id = $1', [id]);
  return rows[0];
}

export async function listHosts(db: Queryable): Promise<HostRecord[]> {
  const { rows } = await db.query<HostRecord>(`SELECT ${HOST_COLUMNS} FROM hosts ${ORDER}`);
  return rows;
}

export async function findHost(db: Queryable, id: string): Promise<HostRecord | undefined> {
  const { rows } = await db.query<HostRecord>(`SELECT ${HOST_COLUMNS} FROM hosts WHERE id = $1`, [id]);
  return rows[0];
}

/** The host of `hypervisor` with the fewest live VMs, connected (KVM: with a libvirt URI) ones first: where a new VM goes. */
export async function leastLoadedHost(db: Queryable, hypervisor: Hypervisor): Promise<HostRecord | undefined> {
  const { rows } = await db.query<HostRecord>(
    `SELECT h.id, h.name, h.hypervisor, h.address, h.uri, h.accelerator, h.accelerator_reason AS "acceleratorReason" FROM hosts h
       LEFT JOIN virtual_machines vm ON vm.host_id = h.id AND vm.state <> 'Destroyed'
      WHERE h.hypervisor = $1 GROUP BY h.id
      ORDER BY (h.hypervisor = 'KVM' AND h.uri IS NULL), count(vm.id), h.created, h.name LIMIT 1`,
    [hypervisor],
  );
  return rows[0];
}

export async function listServiceOfferings(db: Queryable): Promise<ServiceOfferingRecord[]> {
  const { rows } = await db.query<ServiceOfferingRecord>(
    `SELECT id, name, cpu_count AS "cpuCount", memory_mb AS "memoryMb" FROM service_offerings ${ORDER}`,
  );
  return rows;
}

/** An offering by id or by name. */
export async function findServiceOffering(db: Queryable, idOrName: string): Promise<ServiceOfferingRecord | undefined> {
  const { rows } = await db.query<ServiceOfferingRecord>(
    `SELECT id, name, cpu_count AS "cpuCount", memory_mb AS "memoryMb" FROM service_offerings
      WHERE id::text = lower($1) OR name = $1`,
    [idOrName],
  );
  return rows[0];
}

export async function listIsos(db: Queryable): Promise<IsoRecord[]> {
  const { rows } = await db.query<IsoRecord>(`SELECT id, name, os_type AS "osType", path IS NOT NULL AS "hasImage" FROM isos ${ORDER}`);
  return rows;
}

export async function findIso(db: Queryable, id: string): Promise<IsoRecord | undefined> {
  const { rows } = await db.query<IsoRecord>('SELECT id, name, os_type AS "osType", path IS NOT NULL AS "hasImage" FROM isos WHERE id = $1', [id]);
  return rows[0];
}

/** The image file of an ISO, or null when it has none on this server. */
export async function isoImagePath(db: Queryable, id: string): Promise<string | null> {
  const { rows } = await db.query<{ path: string | null }>('SELECT path FROM isos WHERE id = $1', [id]);
  return rows[0]?.path ?? null;
}

/** An image store by id. */
export async function findImageStore(db: Queryable, id: string): Promise<{ id: string; path: string } | undefined> {
  const { rows } = await db.query<{ id: string; path: string }>('SELECT id, path FROM image_stores WHERE id = $1', [id]);
  return rows[0];
}

/** Every image store, oldest first. */
export async function listImageStores(db: Queryable): Promise<Array<{ id: string; path: string }>> {
  const { rows } = await db.query<{ id: string; path: string }>('SELECT id, path FROM image_stores ORDER BY created, name');
  return rows;
}
