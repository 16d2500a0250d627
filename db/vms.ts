import type { Queryable } from './pool.js';

export type { Hypervisor } from '../domain/hypervisor.js';
import type { Hypervisor } from '../domain/hypervisor.js';
export type VmState = 'Running' | 'Stopped' | 'Destroyed';

/** A `virtual_machines` row. */
export interface VmRecord {
  id: string;
  accountId: string;
  name: string;
  hypervisor: Hypervisor;
  state: VmState;
  serviceOfferingId: string | null;
  isoId: string | null;
  hostId: string | null;
  createdAt: string;
  updatedAt: string;
}

/** Maps a `virtual_machines` row. */
export function toVmRecord(r: Record<string, any>): VmRecord {
  return {
    id: r.id,
    accountId: r.account_id,
    name: r.name,
    hypervisor: r.hypervisor,
    state: r.state,
    serviceOfferingId: r.service_offering_id,
    isoId: r.iso_id,
    hostId: r.host_id,
    createdAt: new Date(r.created).toISOString(),
    updatedAt: new Date(r.updated).toISOString(),
  };
}

/** One VM visible to `ownerId` (null: any account), or undefined. */
export async function findVm(db: Queryable, id: string, ownerId: string | null): Promise<VmRecord | undefined> {
  const { rows } = await db.query(
    'SELECT * FROM virtual_machines WHERE id = $1 AND removed IS NULL AND ($2::uuid IS NULL OR account_id = $2)',
    [id, ownerId],
  );
  return rows[0] ? toVmRecord(rows[0]) : undefined;
}

/** VMs visible to `ownerId` (null: every account), oldest first; keyset-paged by `after` (an id) and `limit`. */
export async function listVms(db: Queryable, ownerId: string | null, filter: { state?: VmState; after?: string; limit?: number } = {}): Promise<VmRecord[]> {
  const { rows } = await db.query(
    `SELECT * FROM virtual_machines
      WHERE removed IS NULL AND ($1::uuid IS NULL OR account_id = $1) AND ($2::text IS NULL OR state = $2)
        AND ($3::uuid IS NULL OR (created, id) > (SELECT created, id FROM virtual_machines WHERE id = $3))
      ORDER BY created, id
      LIMIT $4`,
    [ownerId, filter.state ?? null, filter.after ?? null, filter.limit ?? null],
  );
  return rows.map(toVmRecord);
}

export interface NewVm {
  id: string;
  accountId: string;
  name: string;
  hypervisor: Hypervisor;
  serviceOfferingId: string;
  hostId: string;
}

/** Inserts a Running VM. */
export async function insertVm(db: Queryable, vm: NewVm): Promise<VmRecord> {
  const { rows } = await db.query(
    `INSERT INTO virtual_machines (id, account_id, name, hypervisor, state, service_offering_id, host_id)
     VALUES ($1, $2, $3, $4, 'Running', $5, $6) RETURNING *`,
    [vm.id, vm.accountId, vm.name, vm.hypervisor, vm.serviceOfferingId, vm.hostId],
  );
  return toVmRecord(rows[0]);
}

/** Sets columns of a VM (and its `updated` time); returns the new row. */
export async function updateVm(
  db: Queryable,
  id: string,
  set: Partial<Record<'state' | 'iso_id' | 'service_offering_id' | 'host_id', unknown>>,
): Promise<VmRecord> {
  const cols = Object.keys(set);
  const { rows } = await db.query(
    `UPDATE virtual_machines SET ${cols.map((c, i) => `${c} = $${i + 2}, `).join('')}updated = now() WHERE id = $1 RETURNING *`,
    [id, ...cols.map((c) => set[c as keyof typeof set])],
  );
  return toVmRecord(rows[0]);
}
