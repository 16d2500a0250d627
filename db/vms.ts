import type { Queryable } from './pool.js';

export type { Hypervisor } from '../domain/hypervisor.js';
import type { Hypervisor } from '../domain/hypervisor.js';
export const VM_STATES = ['Starting', 'Running', 'Stopping', 'Stopped', 'Destroyed'] as const;
export type VmState = (typeof VM_STATES)[number];

/** The states a VM action passes through while its hypervisor call runs (committed before it, left after it). */
export const TRANSITIONAL_VM_STATES = ['Starting', 'Stopping'] as const;

/** A disk hot-plug on a running VM between its two commits. */
export interface PendingDiskChange {
  op: 'attach' | 'detach';
  volumeId: string;
  target: string;
}

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
  /** When the VM entered its state (a transitional state older than its bound is settled from libvirt). */
  stateSince: string;
  /** The hypervisor's text for the last action that failed, or null. */
  lastError: string | null;
  /** A hot-plug in flight (committed before libvirt is called, cleared after), and since when. */
  pendingDisk: PendingDiskChange | null;
  pendingDiskSince: string | null;
  /** The accelerator its domain last started with (kvm, or qemu: TCG); null if it never started on libvirt. */
  accelerator: 'kvm' | 'qemu' | null;
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
    stateSince: new Date(r.state_since).toISOString(),
    lastError: r.last_error ?? null,
    pendingDisk: r.pending_disk ?? null,
    pendingDiskSince: r.pending_disk_since ? new Date(r.pending_disk_since).toISOString() : null,
    accelerator: r.accelerator ?? null,
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
  /** Running for a VM without a hypervisor to start (XenServer's rows); Stopped for one started afterwards. */
  state: 'Running' | 'Stopped';
}

export async function insertVm(db: Queryable, vm: NewVm): Promise<VmRecord> {
  const { rows } = await db.query(
    `INSERT INTO virtual_machines (id, account_id, name, hypervisor, state, service_offering_id, host_id)
     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *`,
    [vm.id, vm.accountId, vm.name, vm.hypervisor, vm.state, vm.serviceOfferingId, vm.hostId],
  );
  return toVmRecord(rows[0]);
}

/** Sets columns of a VM (and its `updated` time); returns the new row. */
export async function updateVm(
  db: Queryable,
  id: string,
  set: Partial<Record<'state' | 'iso_id' | 'service_offering_id' | 'host_id' | 'last_error' | 'pending_disk' | 'accelerator', unknown>>,
): Promise<VmRecord> {
  const cols = Object.keys(set);
  // pending_disk is dated with it (null clears both); jsonb goes in as text.
  const pendingSince = 'pending_disk' in set ? `pending_disk_since = CASE WHEN $${cols.length + 2}::text IS NULL THEN NULL ELSE now() END, ` : '';
  const since = 'state' in set ? 'state_since = CASE WHEN state = $2 THEN state_since ELSE now() END, ' : '';
  // $2 is the new state: state_since moves only when the state changes (the CASE reads the old row).
  const order = 'state' in set ? ['state', ...cols.filter((c) => c !== 'state')] : cols;
  const { rows } = await db.query(
    `UPDATE virtual_machines SET ${since}${pendingSince}${order.map((c, i) => `${c} = $${i + 2}, `).join('')}updated = now() WHERE id = $1 RETURNING *`,
    [id, ...order.map((c) => jsonParam(c, set[c as keyof typeof set])), ...(pendingSince ? [jsonParam('pending_disk', set.pending_disk)] : [])],
  );
  return toVmRecord(rows[0]);
}

/** A KVM VM's row with its host's libvirt URI (null: the host is not connected). */
export type KvmVmOnHost = VmRecord & { hostUri: string | null };

/** KVM VMs in a transitional state since before `olderThanMs` ago: their action's process is presumed dead. */
export async function staleTransitionalVms(db: Queryable, olderThanMs: number): Promise<KvmVmOnHost[]> {
  const { rows } = await db.query(
    `SELECT vm.*, h.uri AS host_uri FROM virtual_machines vm LEFT JOIN hosts h ON h.id = vm.host_id
      WHERE vm.state IN ('Starting', 'Stopping') AND vm.hypervisor = 'KVM' AND vm.removed IS NULL
        AND vm.state_since < now() - make_interval(secs => $1::double precision / 1000)`,
    [olderThanMs],
  );
  return rows.map((r) => ({ ...toVmRecord(r), hostUri: r.host_uri ?? null }));
}

/** The KVM VMs not destroyed, whose row says whether a domain runs, with their host's URI. */
export async function liveKvmVms(db: Queryable): Promise<KvmVmOnHost[]> {
  const { rows } = await db.query(
    `SELECT vm.*, h.uri AS host_uri FROM virtual_machines vm LEFT JOIN hosts h ON h.id = vm.host_id
      WHERE vm.state <> 'Destroyed' AND vm.hypervisor = 'KVM' AND vm.removed IS NULL`,
  );
  return rows.map((r) => ({ ...toVmRecord(r), hostUri: r.host_uri ?? null }));
}

function jsonParam(col: string, value: unknown): unknown {
  return col === 'pending_disk' && value !== null && value !== undefined ? JSON.stringify(value) : value;
}
