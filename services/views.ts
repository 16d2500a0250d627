import { publicErrorMessage } from '../domain/errors.js';
import type { AccountRecord } from '../db/accounts.js';
import type { SnapshotRecord, StoreRefRecord } from '../db/snapshots.js';
import type { VmRecord } from '../db/vms.js';
import type { VolumeRecord } from '../db/volumes.js';

/*
 * The API shapes of the resources (docs/design.md §8), built from records. The zod schemas in api/schemas
 * describe exactly these.
 */

export type VolumeView = Omit<VolumeRecord, 'removedAt'>;
export type VmView = VmRecord & { volumes: VolumeView[] };
export type AccountView = AccountRecord;

export interface SnapshotView {
  id: string;
  name: string;
  volumeId: string;
  vmId: string | null;
  accountId: string;
  state: SnapshotRecord['status'];
  asyncBackup: boolean;
  createdAt: string;
  updatedAt: string;
  workflowId: string;
  backup: {
    attempts: number;
    maxAttempts: number;
    retryIntervalSeconds: number;
    bytesDone: number;
    bytesTotal: number;
    lastError: string | null;
    nextAttemptAt: string | null;
    /** The backup in the image store (docs/design.md §14): null until one is being written. */
    kind: 'full' | 'incremental' | null;
    /** The snapshot whose backup this one is a delta on. */
    parentSnapshotId: string | null;
    /** Bytes of the backup file written to the image store (for a delta: the delta only). */
    bytesWritten: number | null;
    /** The files a restore reads: 1 for a full backup, n+1 for the n-th delta after it. */
    chainLength: number | null;
  };
  storeRefs: Array<{
    role: StoreRefRecord['role'];
    storeId: string;
    installPath: string;
    state: StoreRefRecord['state'];
    sizeBytes: number | null;
    checksum: string | null;
    parentSnapshotId: string | null;
    chainLength: number;
  }>;
}

/** A volume as the API shows it (with its path on primary storage). */
export function volumeView(v: VolumeRecord): VolumeView {
  const { removedAt: _removed, ...view } = v;
  return view;
}

/** A VM with its attached volumes. */
export function vmView(vm: VmRecord, volumes: VolumeRecord[]): VmView {
  // libvirt's text names host paths: shortened for users (events keep it whole, for admins).
  const lastError = vm.lastError === null ? null : publicErrorMessage(vm.lastError);
  return { ...vm, lastError, volumes: volumes.filter((v) => v.vmId === vm.id).map(volumeView) };
}

/**
 * A copy whose row has not been touched for this long has lost its worker (a running copy writes at least every
 * PROGRESS_ALIVE_MS of activities/snapshot-activities.ts); Temporal hands it to another worker once its
 * heartbeat times out. Shown as such rather than as a frozen progress bar.
 */
const SILENT_COPY_MS = 20_000;

function backupLastError(s: SnapshotRecord, nowMs: number, hostPaths: boolean): string | null {
  const silentMs = nowMs - Date.parse(s.updatedAt);
  if (s.status === 'BackingUp' && s.nextAttemptAt === null && !s.lastError?.includes('interrupted') && silentMs > SILENT_COPY_MS) {
    return `attempt ${s.backupAttempts} interrupted: no progress for ${Math.round(silentMs / 1000)} s (its worker stopped?); resuming on the next worker`;
  }
  if (s.lastError === null) return null;
  return hostPaths ? s.lastError : publicErrorMessage(s.lastError);
}

/**
 * A snapshot as docs/design.md §8 specifies it. `hostPaths`: the caller is an admin, who sees paths in
 * `lastError` whole, as in events; anyone else sees them shortened to their last segment (api/redact.ts).
 */
export function snapshotView(s: SnapshotRecord, refs: StoreRefRecord[], nowMs = Date.now(), hostPaths = false): SnapshotView {
  const image = refs.find((r) => r.role === 'Image' && r.state !== 'Destroyed') ?? refs.find((r) => r.role === 'Image');
  return {
    id: s.id,
    name: s.name,
    volumeId: s.volumeId,
    vmId: s.vmId,
    accountId: s.accountId,
    state: s.status,
    asyncBackup: s.asyncBackup,
    createdAt: s.createdAt,
    updatedAt: s.updatedAt,
    workflowId: s.workflowId,
    backup: {
      attempts: s.backupAttempts,
      maxAttempts: s.backupMaxAttempts,
      retryIntervalSeconds: s.backupRetryInterval,
      bytesDone: Number(s.backupBytesDone),
      bytesTotal: Number(s.backupBytesTotal),
      lastError: backupLastError(s, nowMs, hostPaths),
      nextAttemptAt: s.nextAttemptAt,
      kind: image ? (image.parentSnapshotId ? 'incremental' : 'full') : null,
      parentSnapshotId: image?.parentSnapshotId ?? null,
      bytesWritten: image?.sizeBytes == null ? null : Number(image.sizeBytes),
      chainLength: image ? (image.chainLength ?? 1) : null,
    },
    storeRefs: refs.map((r) => ({
      role: r.role,
      storeId: r.storeId,
      installPath: r.installPath,
      state: r.state,
      sizeBytes: r.sizeBytes == null ? null : Number(r.sizeBytes),
      checksum: r.checksum,
      parentSnapshotId: r.parentSnapshotId ?? null,
      chainLength: r.chainLength ?? 1,
    })),
  };
}
