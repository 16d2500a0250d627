import { IN_PROGRESS_STATES, IllegalSnapshotTransitionError, SNAPSHOT_TRANSITIONS, canTransition, type SnapshotState } from '../domain/snapshot-states.js';
import type { Hypervisor } from '../domain/hypervisor.js';
import type { InFlightSnapshot } from '../domain/policy.js';
import { EVENTS_CHANNEL, type NewEvent } from './events.js';
import { withTransaction, type Pool, type Queryable } from './pool.js';

export interface SnapshotRecord {
  id: string;
  accountId: string;
  volumeId: string;
  vmId: string | null;
  volumeType: 'ROOT' | 'DATADISK';
  name: string;
  status: SnapshotState;
  asyncBackup: boolean;
  workflowId: string;
  idempotencyKey: string | null;
  size: number | null;
  physicalSize: number | null;
  backupMaxAttempts: number;
  backupRetryInterval: number;
  /** Seconds the backup may wait for a backup worker; null for snapshots from before the setting. */
  backupQueueTimeout: number | null;
  /** `backup.incremental` when requested; null for snapshots from before the setting (a full backup). */
  backupIncremental: boolean | null;
  /** `snapshot.delta.max` when requested; null for snapshots from before the setting. */
  snapshotDeltaMax: number | null;
  backupAttempts: number;
  backupBytesDone: number;
  backupBytesTotal: number;
  nextAttemptAt: string | null;
  lastError: string | null;
  createdAt: string;
  updatedAt: string;
  removedAt: string | null;
}

export interface StoreRefRecord {
  snapshotId: string;
  role: 'Primary' | 'Image';
  storeId: string;
  installPath: string;
  /** Failed: an Image ref whose attempt never finished, on a snapshot that went to Error (storage GC removes it). */
  state: 'Allocated' | 'Creating' | 'Ready' | 'Failed' | 'Destroyed';
  sizeBytes: number | null;
  checksum: string | null;
  /** Image refs: the snapshot whose backup this one is a delta on; null for a full backup. */
  parentSnapshotId?: string | null;
  /** Image refs: the files a restore reads (1 for a full backup, 2 for a delta on it, ...). */
  chainLength?: number;
  /** Image refs: why the backup cannot be trusted (the scrub found it, or a member below it, not matching); null: nothing known. */
  fault?: string | null;
  /** Image refs: when the scrub last found the file matching its checksum. */
  verifiedAt?: string | null;
}

const iso = (v: unknown): string | null => (v == null ? null : new Date(v as string).toISOString());

/** Maps a `snapshots` row. */
export function toSnapshotRecord(r: Record<string, any>): SnapshotRecord {
  return {
    id: r.id,
    accountId: r.account_id,
    volumeId: r.volume_id,
    vmId: r.vm_id,
    volumeType: r.volume_type,
    name: r.name,
    status: r.status,
    asyncBackup: r.async_backup,
    workflowId: r.workflow_id,
    idempotencyKey: r.idempotency_key,
    size: r.size,
    physicalSize: r.physical_size,
    backupMaxAttempts: r.backup_max_attempts,
    backupRetryInterval: r.backup_retry_interval,
    backupQueueTimeout: r.backup_queue_timeout ?? null,
    backupIncremental: r.backup_incremental ?? null,
    snapshotDeltaMax: r.snapshot_delta_max ?? null,
    backupAttempts: r.backup_attempts,
    backupBytesDone: r.backup_bytes_done,
    backupBytesTotal: r.backup_bytes_total,
    nextAttemptAt: iso(r.next_attempt_at),
    lastError: r.last_error,
    createdAt: iso(r.created)!,
    updatedAt: iso(r.updated)!,
    removedAt: iso(r.removed),
  };
}

function toStoreRef(r: Record<string, any>): StoreRefRecord {
  return {
    snapshotId: r.snapshot_id,
    role: r.store_role,
    storeId: r.store_id,
    installPath: r.install_path,
    state: r.state,
    sizeBytes: r.size,
    checksum: r.checksum,
    parentSnapshotId: r.parent_snapshot_id ?? null,
    chainLength: r.chain_length ?? 1,
    fault: r.fault ?? null,
    verifiedAt: iso(r.verified_at),
  };
}

export async function getSnapshot(db: Queryable, id: string): Promise<SnapshotRecord | undefined> {
  const { rows } = await db.query('SELECT * FROM snapshots WHERE id = $1', [id]);
  return rows[0] ? toSnapshotRecord(rows[0]) : undefined;
}

export async function getStoreRefs(db: Queryable, snapshotId: string): Promise<StoreRefRecord[]> {
  const { rows } = await db.query('SELECT * FROM snapshot_store_ref WHERE snapshot_id = $1 ORDER BY store_role DESC', [snapshotId]);
  return rows.map(toStoreRef);
}

/** The store refs of many snapshots, by snapshot id (Image before Primary, as getStoreRefs). */
export async function getStoreRefsOf(db: Queryable, snapshotIds: string[]): Promise<Map<string, StoreRefRecord[]>> {
  const out = new Map<string, StoreRefRecord[]>(snapshotIds.map((id) => [id, []]));
  if (snapshotIds.length === 0) return out;
  const { rows } = await db.query('SELECT * FROM snapshot_store_ref WHERE snapshot_id = ANY($1::uuid[]) ORDER BY store_role DESC', [snapshotIds]);
  for (const r of rows) out.get(r.snapshot_id)?.push(toStoreRef(r));
  return out;
}

/** An ILIKE pattern for "contains `text`": LIKE's wildcards and escape in `text` match literally. */
function containing(text: string): string {
  return `%${text.replace(/[\\%_]/g, (m) => `\\${m}`)}%`;
}

/** Snapshots visible to `ownerId` (null: every account), oldest first; Destroyed ones only when asked by state. */
export async function listSnapshots(
  db: Queryable,
  ownerId: string | null,
  filter: { volumeId?: string; vmId?: string; state?: SnapshotState; q?: string; after?: string; limit?: number } = {},
): Promise<SnapshotRecord[]> {
  // Keyset paging: `after` is the last id of the previous page, in (created, id) order.
  // q: a case-insensitive substring of the name, or the id itself (LIKE's wildcards in q match literally).
  const q = filter.q ? containing(filter.q) : null;
  const { rows } = await db.query(
    `SELECT * FROM snapshots
      WHERE ($1::uuid IS NULL OR account_id = $1) AND ($2::uuid IS NULL OR volume_id = $2)
        AND (CASE WHEN $3::text IS NULL THEN status <> 'Destroyed' ELSE status = $3 END)
        AND ($4::uuid IS NULL OR (created, id) > (SELECT created, id FROM snapshots WHERE id = $4))
        AND ($6::uuid IS NULL OR vm_id = $6)
        AND ($7::text IS NULL OR name ILIKE $7 OR id::text = $8)
      ORDER BY created, id
      LIMIT $5`,
    [ownerId, filter.volumeId ?? null, filter.state ?? null, filter.after ?? null, filter.limit ?? null, filter.vmId ?? null, q, filter.q ?? null],
  );
  return rows.map(toSnapshotRecord);
}

/**
 * CloudStack's listSnapshots (api/cloudstack/commands.ts): the filters, one page by offset (CloudStack's
 * page/pagesize) and the total count, all in SQL: a page never reads the account's whole history. Destroyed
 * snapshots are left out, as in listSnapshots above; `keyword` is a case-insensitive substring of the name.
 */
export async function searchSnapshots(
  db: Queryable,
  q: { ownerId: string | null; ids?: string[]; volumeId?: string; name?: string; keyword?: string; limit: number; offset: number },
): Promise<{ count: number; snapshots: SnapshotRecord[] }> {
  const keyword = q.keyword ? containing(q.keyword) : null;
  const where = `($1::uuid IS NULL OR account_id = $1) AND status <> 'Destroyed'
     AND ($2::uuid[] IS NULL OR id = ANY($2)) AND ($3::uuid IS NULL OR volume_id = $3)
     AND ($4::text IS NULL OR name = $4) AND ($5::text IS NULL OR name ILIKE $5)`;
  const args = [q.ownerId, q.ids ?? null, q.volumeId ?? null, q.name ?? null, keyword];
  const total = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM snapshots WHERE ${where}`, args);
  const { rows } = await db.query(`SELECT * FROM snapshots WHERE ${where} ORDER BY created, id LIMIT $6 OFFSET $7`, [...args, q.limit, q.offset]);
  return { count: total.rows[0]!.n, snapshots: rows.map(toSnapshotRecord) };
}

export interface NewSnapshot {
  id: string;
  accountId: string;
  volumeId: string;
  vmId: string | null;
  volumeType: SnapshotRecord['volumeType'];
  name: string;
  asyncBackup: boolean;
  workflowId: string;
  idempotencyKey: string | null;
  backupMaxAttempts: number;
  backupRetryInterval: number;
  backupQueueTimeout: number;
  backupBytesTotal: number;
  backupIncremental: boolean;
  snapshotDeltaMax: number;
}

/** Inserts a snapshot request (Allocated). */
export async function insertSnapshot(db: Queryable, s: NewSnapshot): Promise<SnapshotRecord> {
  const { rows } = await db.query(
    `INSERT INTO snapshots (id, account_id, volume_id, vm_id, volume_type, name, status, async_backup, workflow_id,
                            idempotency_key, backup_max_attempts, backup_retry_interval, backup_bytes_total, backup_queue_timeout,
                            backup_incremental, snapshot_delta_max)
     VALUES ($1, $2, $3, $4, $5, $6, 'Allocated', $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING *`,
    [s.id, s.accountId, s.volumeId, s.vmId, s.volumeType, s.name, s.asyncBackup, s.workflowId, s.idempotencyKey,
      s.backupMaxAttempts, s.backupRetryInterval, s.backupBytesTotal, s.backupQueueTimeout, s.backupIncremental, s.snapshotDeltaMax],
  );
  return toSnapshotRecord(rows[0]);
}

/**
 * What becomes of a cleaned snapshot's store refs: a snapshot the user deleted keeps them, Destroyed, as the record
 * of what was removed; an Error snapshot cleaned by storage GC loses them (the seed: "its related entries in
 * snapshot_store_ref table will be deleted"). Returns how many refs changed.
 */
export async function retireStoreRefs(db: Queryable, snapshotId: string, how: 'mark-destroyed' | 'delete'): Promise<number> {
  const { rowCount } =
    how === 'delete'
      ? await db.query('DELETE FROM snapshot_store_ref WHERE snapshot_id = $1', [snapshotId])
      : await db.query(`UPDATE snapshot_store_ref SET state = 'Destroyed', last_updated = now() WHERE snapshot_id = $1`, [snapshotId]);
  return rowCount ?? 0;
}

export interface TransitionOptions {
  /** Extra columns to set with the transition. */
  set?: Partial<Record<'last_error' | 'size' | 'physical_size' | 'next_attempt_at' | 'removed', unknown>>;
  /** The event; `{name}` in its description stands for the snapshot's name (for callers that have not read the row). */
  event: Omit<NewEvent, 'accountId' | 'resourceType' | 'resourceId'>;
  /**
   * A store reference written by the same statement (whether or not the state changes, like upsertStoreRef):
   * a state and the ref it implies commit together, in one round trip on the time-to-created path.
   */
  storeRef?: StoreRefRecord;
}

const UPSERT_STORE_REF_SQL = (p: (i: number) => string) =>
  `INSERT INTO snapshot_store_ref (snapshot_id, store_role, store_id, install_path, state, size, checksum, parent_snapshot_id, chain_length)
     VALUES (${[0, 1, 2, 3, 4, 5, 6, 7, 8].map(p).join(', ')})
     ON CONFLICT (snapshot_id, store_role) DO UPDATE SET store_id = EXCLUDED.store_id,
       install_path = EXCLUDED.install_path, state = EXCLUDED.state, size = EXCLUDED.size,
       checksum = EXCLUDED.checksum, parent_snapshot_id = EXCLUDED.parent_snapshot_id,
       chain_length = EXCLUDED.chain_length, last_updated = now()`;

const storeRefParams = (ref: StoreRefRecord): unknown[] => [
  ref.snapshotId,
  ref.role,
  ref.storeId,
  ref.installPath,
  ref.state,
  ref.sizeBytes,
  ref.checksum,
  ref.parentSnapshotId ?? null,
  ref.chainLength ?? 1,
];

/** States from which `to` may be entered (the state machine read backwards). */
function statesLeadingTo(to: SnapshotState): SnapshotState[] {
  return (Object.keys(SNAPSHOT_TRANSITIONS) as SnapshotState[]).filter((from) => canTransition(from, to));
}

/**
 * Moves a snapshot to `to` through the state machine, with its event, atomically under a row lock. The one
 * way a snapshot's state changes: activities call it on the pool, API operations inside the transaction that
 * holds their row locks (the event's NOTIFY is then delivered at COMMIT).
 * Already being in `to` is a no-op (activities retry), any other illegal move throws.
 *
 * One statement, so one round trip instead of six (BEGIN, lock, update, event, notify, COMMIT): it sits on the
 * time-to-created path twice per snapshot. The row is locked, checked, updated, its event inserted and announced
 * (LISTEN/NOTIFY) in a single implicit transaction.
 */
export async function transitionSnapshot(
  db: Queryable,
  id: string,
  to: SnapshotState,
  opts: TransitionOptions,
): Promise<{ changed: boolean; snapshot: SnapshotRecord }> {
  const set = opts.set ?? {};
  const cols = Object.keys(set) as Array<keyof typeof set>;
  const FIXED = 8;
  const assignments = cols.map((c, i) => `, ${c} = $${i + FIXED + 1}`).join('');
  const e = opts.event;
  const refAt = FIXED + cols.length;
  const ref = opts.storeRef ? `ref AS (${UPSERT_STORE_REF_SQL((i) => `$${refAt + i + 1}`)}),
     ` : '';
  // Entering Error, an unfinished Image ref (its attempt never wrote a Ready backup) becomes Failed in the same
  // statement: no Error snapshot shows a copy still "Creating" until storage GC cleans it. A Ready one (a delete
  // that failed) keeps its state. Not when this statement writes the Image ref itself (one row, one write).
  const failRefs =
    to === 'Error' && opts.storeRef?.role !== 'Image'
      ? `failed AS (
       UPDATE snapshot_store_ref r SET state = 'Failed', last_updated = now() FROM upd
        WHERE r.snapshot_id = upd.id AND r.store_role = 'Image' AND r.state IN ('Allocated', 'Creating')
       RETURNING r.snapshot_id
     ),
     `
      : '';
  const { rows } = await db.query(
    `WITH ${ref}cur AS (SELECT * FROM snapshots WHERE id = $1 FOR UPDATE),
     upd AS (
       UPDATE snapshots s SET status = $2, updated = now()${assignments}
         FROM cur WHERE s.id = cur.id AND cur.status = ANY($3::text[])
       RETURNING s.*
     ),
     ${failRefs}ev AS (
       INSERT INTO events (type, level, account_id, resource_type, resource_id, description, details)
       SELECT $4, $5, upd.account_id, 'Snapshot', upd.id, replace($6, '{name}', upd.name),
              $7::jsonb || jsonb_build_object('snapshotId', upd.id, 'volumeId', upd.volume_id, 'from', cur.status, 'to', upd.status)
         FROM upd CROSS JOIN cur
       RETURNING pg_notify($8, id::text)
     )
     SELECT 'updated' AS row_kind, upd.* FROM upd
     UNION ALL
     SELECT 'current' AS row_kind, cur.* FROM cur`,
    [
      id,
      to,
      statesLeadingTo(to),
      e.type,
      e.level ?? 'INFO',
      e.description,
      JSON.stringify(e.details ?? {}),
      EVENTS_CHANNEL,
      ...cols.map((c) => set[c]),
      ...(opts.storeRef ? storeRefParams(opts.storeRef) : []),
    ],
  );
  const updated = rows.find((r) => r.row_kind === 'updated');
  if (updated) return { changed: true, snapshot: toSnapshotRecord(updated) };
  const current = rows.find((r) => r.row_kind === 'current');
  if (!current) throw new Error(`snapshot ${id} not found`);
  const snapshot = toSnapshotRecord(current);
  if (snapshot.status === to) return { changed: false, snapshot };
  throw new IllegalSnapshotTransitionError(id, snapshot.status, to);
}

/** Updates backup bookkeeping (attempt number, progress, errors) without a state change. */
export async function updateBackupProgress(
  db: Queryable,
  id: string,
  fields: Partial<{ attempts: number; bytesDone: number; bytesTotal: number; nextAttemptAt: Date | null; lastError: string | null }>,
): Promise<void> {
  const map: Record<string, string> = {
    attempts: 'backup_attempts',
    bytesDone: 'backup_bytes_done',
    bytesTotal: 'backup_bytes_total',
    nextAttemptAt: 'next_attempt_at',
    lastError: 'last_error',
  };
  const keys = Object.keys(fields).filter((k) => k in map);
  if (!keys.length) return;
  await db.query(
    `UPDATE snapshots SET ${keys.map((k, i) => `${map[k]} = $${i + 2}`).join(', ')}, updated = now() WHERE id = $1`,
    [id, ...keys.map((k) => (fields as Record<string, unknown>)[k])],
  );
}

/** Creates or updates the store reference of a snapshot on one store (parent and chain length: full backup unless given). */
export async function upsertStoreRef(db: Queryable, ref: StoreRefRecord): Promise<void> {
  await db.query(UPSERT_STORE_REF_SQL((i) => `$${i + 1}`), storeRefParams(ref));
}

/** A Ready backup a new backup of the same volume may be a delta on (docs/design.md §14). */
export interface BackupParentCandidate {
  snapshotId: string;
  installPath: string;
  checksum: string | null;
  sizeBytes: number | null;
  chainLength: number;
  /** The volume's virtual size when that snapshot was taken. */
  virtualSize: number | null;
}

/**
 * The latest backup of `volumeId` in store `storeId` other than `snapshotId`'s own: a BackedUp snapshot with a
 * Ready Image ref. Only the latest is a candidate: when its chain is full, the next backup is a full one.
 */
export async function latestBackupOfVolume(db: Queryable, q: { volumeId: string; storeId: string; snapshotId: string }): Promise<BackupParentCandidate | undefined> {
  const { rows } = await db.query(
    `SELECT s.id, s.size AS virtual_size, r.install_path, r.checksum, r.size, r.chain_length
       FROM snapshots s JOIN snapshot_store_ref r ON r.snapshot_id = s.id AND r.store_role = 'Image'
      WHERE s.volume_id = $1 AND r.store_id = $2 AND s.id <> $3 AND s.status = 'BackedUp' AND r.state = 'Ready'
      ORDER BY s.created DESC, s.id DESC LIMIT 1`,
    [q.volumeId, q.storeId, q.snapshotId],
  );
  const r = rows[0];
  return (
    r && {
      snapshotId: r.id,
      installPath: r.install_path,
      checksum: r.checksum,
      sizeBytes: r.size == null ? null : Number(r.size),
      chainLength: r.chain_length,
      virtualSize: r.virtual_size == null ? null : Number(r.virtual_size),
    }
  );
}

/**
 * The Image refs of a backup's chain, from `snapshotId`'s own down to the full backup at its base (whatever their
 * snapshots' states: a deleted snapshot's backup stays while a later one depends on it). A chain that ends in a
 * missing ref is returned as far as it goes; the caller compares its length with the recorded chain length.
 */
export async function getBackupChain(db: Queryable, snapshotId: string): Promise<StoreRefRecord[]> {
  const { rows } = await db.query(
    `WITH RECURSIVE chain AS (
       SELECT r.*, 1 AS depth FROM snapshot_store_ref r WHERE r.snapshot_id = $1 AND r.store_role = 'Image'
       UNION ALL
       SELECT p.*, c.depth + 1 FROM chain c
         JOIN snapshot_store_ref p ON p.snapshot_id = c.parent_snapshot_id AND p.store_role = 'Image'
        WHERE c.depth < 10000
     )
     SELECT * FROM chain ORDER BY depth`,
    [snapshotId],
  );
  return rows.map(toStoreRef);
}

/**
 * Records, as an attempt starts, where a snapshot's backup will go and what it is a delta on (the Image ref,
 * state Creating): from then on nothing removes the parent's backup. The parent is re-checked under its row lock
 * (a user's delete holds it FOR UPDATE): if it is no longer BackedUp with a Ready backup, nothing is recorded
 * and false is the answer (the caller takes a full backup). Without a parent it always records.
 * With `token` (the attempt's fencing token, claimBackupAttempt) it records only while the snapshot's row still
 * holds that token, under the row's lock; a superseded attempt gets BackupSupersededError and records nothing.
 */
export async function beginImageRef(
  db: Queryable,
  ref: { snapshotId: string; storeId: string; installPath: string; parent: { snapshotId: string; chainLength: number } | null; token?: number },
): Promise<boolean> {
  const { rows } = await db.query<{ owned: boolean; recorded: boolean }>(
    `WITH owner AS (
       SELECT id FROM snapshots WHERE id = $1 AND ($6::int IS NULL OR backup_fence = $6) FOR UPDATE
     ),
     parent AS (
       SELECT s.id FROM snapshots s JOIN snapshot_store_ref r ON r.snapshot_id = s.id AND r.store_role = 'Image'
        WHERE s.id = $5 AND s.status = 'BackedUp' AND r.state = 'Ready' AND r.store_id = $2
        FOR SHARE OF s
     ),
     ins AS (
       INSERT INTO snapshot_store_ref (snapshot_id, store_role, store_id, install_path, state, size, checksum, parent_snapshot_id, chain_length)
       SELECT $1, 'Image', $2, $3, 'Creating', NULL, NULL, $5::uuid, $4 FROM owner
        WHERE $5::uuid IS NULL OR EXISTS (SELECT 1 FROM parent)
       ON CONFLICT (snapshot_id, store_role) DO UPDATE SET store_id = EXCLUDED.store_id, install_path = EXCLUDED.install_path,
         state = 'Creating', size = NULL, checksum = NULL, parent_snapshot_id = EXCLUDED.parent_snapshot_id,
         chain_length = EXCLUDED.chain_length, last_updated = now()
       RETURNING snapshot_id
     )
     SELECT EXISTS (SELECT 1 FROM owner) AS owned, EXISTS (SELECT 1 FROM ins) AS recorded`,
    [ref.snapshotId, ref.storeId, ref.installPath, ref.parent ? ref.parent.chainLength + 1 : 1, ref.parent?.snapshotId ?? null, ref.token ?? null],
  );
  if (!rows[0]!.owned) throw new BackupSupersededError(ref.snapshotId, ref.token ?? 0);
  return rows[0]!.recorded;
}

/**
 * Thrown when a backup attempt writes after a newer execution of the backup took over (its fencing token is no
 * longer the row's): it must stop and write nothing more (docs/design.md §5, fenced attempts).
 */
export class BackupSupersededError extends Error {
  override name = 'BackupSupersededError';
  constructor(
    readonly snapshotId: string,
    readonly token: number,
  ) {
    super(`backup of snapshot ${snapshotId} was taken over by a newer execution (this one held token ${token})`);
  }
}

/** What an execution of a backup meets as it begins (claimBackupAttempt). */
export type BackupClaim =
  /** It owns the backup now: `token` fences every write it makes. */
  | { kind: 'owner'; token: number }
  /** This very attempt already failed its copy (recorded before it was reported): the failure is replayed. */
  | { kind: 'failed'; error: string }
  /** The row is no longer BackingUp (another execution finished it, or it failed): nothing was claimed. */
  | { kind: 'state'; status: SnapshotState };

/**
 * Begins one execution of a backup attempt: takes the next fencing token of a BackingUp snapshot (every older
 * execution still running is superseded from now on) and records the attempt number, progress reset, no next
 * attempt, no recorded failure. Unless `attempt` is the one whose copy failure is recorded on the row
 * (recordCopyFailure): then nothing changes and that failure is the answer, so a re-delivery of a failed attempt
 * reports it instead of copying again. One statement, under the row's lock.
 */
export async function claimBackupAttempt(db: Queryable, snapshotId: string, attempt: number): Promise<BackupClaim> {
  const { rows } = await db.query(
    `WITH cur AS (SELECT id, status, backup_failed_attempt, backup_failed_error FROM snapshots WHERE id = $1 FOR UPDATE),
     upd AS (
       UPDATE snapshots s SET backup_fence = s.backup_fence + 1, backup_attempts = $2, backup_bytes_done = 0,
              next_attempt_at = NULL, backup_failed_attempt = NULL, backup_failed_error = NULL, updated = now()
         FROM cur WHERE s.id = cur.id AND cur.status = 'BackingUp' AND cur.backup_failed_attempt IS DISTINCT FROM $2
       RETURNING s.backup_fence
     )
     SELECT cur.status, cur.backup_failed_attempt, cur.backup_failed_error, (SELECT backup_fence FROM upd) AS token FROM cur`,
    [snapshotId, attempt],
  );
  const r = rows[0];
  if (!r) throw new Error(`snapshot ${snapshotId} not found`);
  if (r.token != null) return { kind: 'owner', token: Number(r.token) };
  if (r.status === 'BackingUp' && r.backup_failed_attempt === attempt) return { kind: 'failed', error: r.backup_failed_error ?? `backup attempt ${attempt} failed` };
  return { kind: 'state', status: r.status };
}

/** Whether the execution holding `token` still owns the snapshot's backup (nothing newer began, still BackingUp). */
export async function ownsBackupAttempt(db: Queryable, snapshotId: string, token: number): Promise<boolean> {
  const { rows } = await db.query(`SELECT 1 FROM snapshots WHERE id = $1 AND backup_fence = $2 AND status = 'BackingUp'`, [snapshotId, token]);
  return rows.length > 0;
}

/**
 * Runs `fn` (the rename of a backup file into place: short) while the execution holding `token` owns the backup,
 * holding the snapshot's row lock meanwhile, so no newer execution can begin (claimBackupAttempt waits) between
 * the check and the rename: a superseded execution never replaces the file of the one that took over. Throws
 * BackupSupersededError, without running `fn`, when it no longer owns it.
 */
export async function whileOwningBackup<T>(pool: Pool, snapshotId: string, token: number, fn: () => Promise<T>): Promise<T> {
  return withTransaction(pool, async (client) => {
    const { rows } = await client.query(
      `SELECT 1 FROM snapshots WHERE id = $1 AND backup_fence = $2 AND status = 'BackingUp' FOR UPDATE`,
      [snapshotId, token],
    );
    if (rows.length === 0) throw new BackupSupersededError(snapshotId, token);
    return fn();
  });
}

/**
 * Records a failed copy of the execution holding `token`, with its event, in one statement: the reason, the next
 * attempt, and (with `attempt`, the workflow's attempt number) the failed attempt, which a re-delivery of that
 * attempt replays (claimBackupAttempt). False, and nothing written, when the execution was superseded.
 */
export async function recordCopyFailure(
  db: Queryable,
  f: { snapshotId: string; token: number; attempt: number | null; error: string; nextAttemptAt: Date | null; event: Omit<NewEvent, 'accountId' | 'resourceType' | 'resourceId'> },
): Promise<boolean> {
  const { rows } = await db.query(
    `WITH upd AS (
       UPDATE snapshots SET last_error = $3, next_attempt_at = $4, backup_failed_attempt = $5,
              backup_failed_error = CASE WHEN $5::int IS NULL THEN NULL ELSE $3 END, updated = now()
        WHERE id = $1 AND backup_fence = $2 AND status = 'BackingUp'
       RETURNING id, account_id
     ),
     ev AS (
       INSERT INTO events (type, level, account_id, resource_type, resource_id, description, details)
       SELECT $6, $7, upd.account_id, 'Snapshot', upd.id, $8, $9::jsonb FROM upd
       RETURNING pg_notify($10, id::text)
     )
     SELECT upd.id, (SELECT count(*) FROM ev) AS events FROM upd`,
    [f.snapshotId, f.token, f.error, f.nextAttemptAt, f.attempt, f.event.type, f.event.level ?? 'INFO', f.event.description, JSON.stringify(f.event.details ?? {}), EVENTS_CHANNEL],
  );
  return rows.length > 0;
}

/**
 * Publishes a finished backup: the Image ref Ready with the file's size, checksum and parent, the snapshot
 * BackedUp with its event and progress complete, in one statement under the row's lock, only while the execution
 * holding `token` owns the backup. 'superseded' (nothing written) when a newer execution began; 'state' with the
 * row's state when the row is no longer BackingUp.
 */
export async function completeBackup(
  db: Queryable,
  c: { token: number; ref: StoreRefRecord; event: Omit<NewEvent, 'accountId' | 'resourceType' | 'resourceId'> },
): Promise<{ outcome: 'done'; snapshot: SnapshotRecord } | { outcome: 'superseded' } | { outcome: 'state'; status: SnapshotState }> {
  const e = c.event;
  const { rows } = await db.query(
    `WITH cur AS (SELECT * FROM snapshots WHERE id = $1 FOR UPDATE),
     own AS (SELECT cur.id FROM cur WHERE cur.backup_fence = $10 AND cur.status = 'BackingUp'),
     ref AS (
       INSERT INTO snapshot_store_ref (snapshot_id, store_role, store_id, install_path, state, size, checksum, parent_snapshot_id, chain_length)
       SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 FROM own
       ON CONFLICT (snapshot_id, store_role) DO UPDATE SET store_id = EXCLUDED.store_id,
         install_path = EXCLUDED.install_path, state = EXCLUDED.state, size = EXCLUDED.size,
         checksum = EXCLUDED.checksum, parent_snapshot_id = EXCLUDED.parent_snapshot_id,
         chain_length = EXCLUDED.chain_length, last_updated = now()
       RETURNING snapshot_id
     ),
     upd AS (
       UPDATE snapshots s SET status = 'BackedUp', physical_size = $6, next_attempt_at = NULL, last_error = NULL,
              backup_bytes_done = s.backup_bytes_total, updated = now()
         FROM own WHERE s.id = own.id AND EXISTS (SELECT 1 FROM ref)
       RETURNING s.*
     ),
     ev AS (
       INSERT INTO events (type, level, account_id, resource_type, resource_id, description, details)
       SELECT $11, $12, upd.account_id, 'Snapshot', upd.id, replace($13, '{name}', upd.name),
              $14::jsonb || jsonb_build_object('snapshotId', upd.id, 'volumeId', upd.volume_id, 'from', 'BackingUp', 'to', upd.status)
         FROM upd
       RETURNING pg_notify($15, id::text)
     )
     SELECT 'updated' AS row_kind, upd.* FROM upd
     UNION ALL
     SELECT 'current' AS row_kind, cur.* FROM cur`,
    [...storeRefParams(c.ref), c.token, e.type, e.level ?? 'INFO', e.description, JSON.stringify(e.details ?? {}), EVENTS_CHANNEL],
  );
  const updated = rows.find((r) => r.row_kind === 'updated');
  if (updated) return { outcome: 'done', snapshot: toSnapshotRecord(updated) };
  const current = rows.find((r) => r.row_kind === 'current');
  if (!current) throw new Error(`snapshot ${c.ref.snapshotId} not found`);
  if (current.backup_fence !== c.token) return { outcome: 'superseded' };
  return { outcome: 'state', status: current.status };
}

/** Whether a later backup (being written or Ready) is a delta on this snapshot's backup: then its file must stay. */
export async function hasDependentBackups(db: Queryable, snapshotId: string): Promise<boolean> {
  const { rows } = await db.query(
    `SELECT 1 FROM snapshot_store_ref WHERE parent_snapshot_id = $1 AND store_role = 'Image' AND state <> 'Destroyed' LIMIT 1`,
    [snapshotId],
  );
  return rows.length > 0;
}

/** Of `snapshotIds`, those whose backup file must stay: a later backup depends on it, or it awaits storage GC (below). */
export async function keptBackupSnapshotIds(db: Queryable, snapshotIds: string[]): Promise<Set<string>> {
  if (snapshotIds.length === 0) return new Set();
  const { rows } = await db.query(
    `SELECT s.id FROM snapshots s JOIN snapshot_store_ref r ON r.snapshot_id = s.id AND r.store_role = 'Image'
      WHERE s.id = ANY($1::uuid[]) AND r.state <> 'Destroyed'
        AND (s.status = 'Destroyed' OR EXISTS (
          SELECT 1 FROM snapshot_store_ref c WHERE c.parent_snapshot_id = s.id AND c.store_role = 'Image' AND c.state <> 'Destroyed'))`,
    [snapshotIds],
  );
  return new Set(rows.map((r) => String(r.id).toLowerCase()));
}

/** A backup kept for later deltas whose snapshot is gone, that no backup depends on any more. */
export interface ReleasedBackup {
  snapshotId: string;
  accountId: string;
  volumeId: string;
  hypervisor: 'KVM' | 'XenServer';
  storeId: string;
  storePath: string;
  installPath: string;
}

/** Backups of Destroyed snapshots kept as parents that nothing references any more: storage GC removes them. */
export async function unreferencedKeptBackups(db: Queryable): Promise<ReleasedBackup[]> {
  const { rows } = await db.query(
    `SELECT s.id, s.account_id, s.volume_id, v.hypervisor, r.store_id, st.path AS store_path, r.install_path
       FROM snapshots s
       JOIN snapshot_store_ref r ON r.snapshot_id = s.id AND r.store_role = 'Image'
       JOIN volumes v ON v.id = s.volume_id
       JOIN image_stores st ON st.id = r.store_id
      WHERE s.status = 'Destroyed' AND r.state <> 'Destroyed'
        AND NOT EXISTS (SELECT 1 FROM snapshot_store_ref c WHERE c.parent_snapshot_id = s.id AND c.store_role = 'Image' AND c.state <> 'Destroyed')
      ORDER BY s.created DESC`,
  );
  return rows.map((r) => ({
    snapshotId: r.id,
    accountId: r.account_id,
    volumeId: r.volume_id,
    hypervisor: r.hypervisor,
    storeId: r.store_id,
    storePath: r.store_path,
    installPath: r.install_path,
  }));
}

/** Marks a store reference with a new state. */
export async function setStoreRefState(db: Queryable, snapshotId: string, role: StoreRefRecord['role'], state: StoreRefRecord['state']): Promise<void> {
  await db.query('UPDATE snapshot_store_ref SET state = $3, last_updated = now() WHERE snapshot_id = $1 AND store_role = $2', [snapshotId, role, state]);
}

/**
 * Moves a snapshot that is still Allocated to Error with its reason and event; false when it has moved on (its
 * workflow took it). For a request whose workflow could not be started: the row must not hold its volume.
 */
export async function failAllocatedSnapshot(db: Queryable, id: string, reason: string): Promise<boolean> {
  const { rows } = await db.query(
    `WITH upd AS (
       UPDATE snapshots SET status = 'Error', last_error = $2, updated = now() WHERE id = $1 AND status = 'Allocated' RETURNING *
     ), ev AS (
       INSERT INTO events (type, level, account_id, resource_type, resource_id, description, details)
       SELECT 'SNAPSHOT.CREATE', 'ERROR', upd.account_id, 'Snapshot', upd.id, 'snapshot ' || upd.name || ' failed: ' || $2,
              jsonb_build_object('snapshotId', upd.id, 'volumeId', upd.volume_id, 'from', 'Allocated', 'to', 'Error')
         FROM upd
       RETURNING pg_notify($3, id::text)
     )
     SELECT id FROM upd`,
    [id, reason, EVENTS_CHANNEL],
  );
  return rows.length > 0;
}

/** Backup bookkeeping of one in-flight snapshot; `lastError` as stored (internal wording). */
export interface BackupProgressRecord {
  snapshotId: string;
  volumeId: string;
  state: SnapshotState;
  attempts: number;
  maxAttempts: number;
  bytesDone: number;
  bytesTotal: number;
  nextAttemptAt: string | null;
  lastError: string | null;
}

/** Backup progress of the in-flight snapshots visible to `ownerId` (null: every account), oldest first. */
export async function listBackupProgress(db: Queryable, ownerId: string | null): Promise<BackupProgressRecord[]> {
  const { rows } = await db.query(
    `SELECT id, volume_id, status, backup_attempts, backup_max_attempts, backup_bytes_done, backup_bytes_total,
            next_attempt_at, last_error FROM snapshots
      WHERE status = ANY($1::text[]) AND ($2::uuid IS NULL OR account_id = $2) ORDER BY created`,
    [IN_PROGRESS_STATES, ownerId],
  );
  return rows.map((r) => ({
    snapshotId: r.id,
    volumeId: r.volume_id,
    state: r.status,
    attempts: r.backup_attempts,
    maxAttempts: r.backup_max_attempts,
    bytesDone: Number(r.backup_bytes_done),
    bytesTotal: Number(r.backup_bytes_total),
    nextAttemptAt: iso(r.next_attempt_at),
    lastError: r.last_error,
  }));
}

/**
 * Snapshots still in flight on the given VM's volumes or the given volumes. Call it inside the transaction
 * that holds the VM/volume row locks, so no backup can start between the check and the action.
 */
export async function inFlightSnapshots(
  db: Queryable,
  scope: { vmId?: string | null; volumeIds?: string[]; snapshotIds?: string[] },
): Promise<InFlightSnapshot[]> {
  const { rows } = await db.query(
    `SELECT s.id, s.volume_id, v.type, v.vm_id
       FROM snapshots s JOIN volumes v ON v.id = s.volume_id
      WHERE s.status = ANY($1::text[])
        AND (v.vm_id = $2 OR s.volume_id = ANY($3::uuid[]) OR s.id = ANY($4::uuid[]))`,
    [IN_PROGRESS_STATES, scope.vmId ?? null, scope.volumeIds ?? [], scope.snapshotIds ?? []],
  );
  return rows.map((r) => ({ snapshotId: r.id, volumeId: r.volume_id, volumeType: r.type, vmId: r.vm_id }));
}

/** An in-flight snapshot as the storage GC reconciler reads it. */
export interface SnapshotToReconcile {
  id: string;
  volumeId: string;
  name: string;
  status: SnapshotState;
  workflowId: string;
  /** Created less than the grace period ago. */
  young: boolean;
}

/** Live snapshots in an in-flight state, oldest first; `young` when created less than `graceSeconds` ago. */
export async function inFlightSnapshotsToReconcile(db: Queryable, graceSeconds: number): Promise<SnapshotToReconcile[]> {
  const { rows } = await db.query(
    `SELECT id, volume_id, name, status, workflow_id, created > now() - make_interval(secs => $2) AS young
     FROM snapshots WHERE status = ANY($1) AND removed IS NULL ORDER BY created`,
    [[...IN_PROGRESS_STATES], graceSeconds],
  );
  return rows.map((r) => ({ id: r.id, volumeId: r.volume_id, name: r.name, status: r.status, workflowId: r.workflow_id, young: r.young }));
}

/**
 * Snapshots whose delete committed its intent (Destroying) but not its result, least recently updated first:
 * start-up and storage GC finish them (services/snapshot-delete.ts).
 */
export async function destroyingSnapshotIds(db: Queryable): Promise<string[]> {
  const { rows } = await db.query<{ id: string }>(`SELECT id FROM snapshots WHERE status = 'Destroying' ORDER BY updated`);
  return rows.map((r) => r.id);
}

/** A snapshot in Error with where its volume's image is, as storage GC cleans it. */
export interface ErrorSnapshotToClean {
  id: string;
  accountId: string;
  volumeId: string;
  name: string;
  volumePath: string;
  volumeState: string;
  hypervisor: Hypervisor;
}

/** Live snapshots in Error with their volume's image, least recently updated first. */
export async function errorSnapshotsToClean(db: Queryable): Promise<ErrorSnapshotToClean[]> {
  const { rows } = await db.query(
    `SELECT s.id, s.account_id, s.volume_id, s.name, v.path AS volume_path, v.state AS volume_state, v.hypervisor
     FROM snapshots s JOIN volumes v ON v.id = s.volume_id
     WHERE s.status = 'Error' AND s.removed IS NULL ORDER BY s.updated`,
  );
  return rows.map((r) => ({
    id: r.id,
    accountId: r.account_id,
    volumeId: r.volume_id,
    name: r.name,
    volumePath: r.volume_path,
    volumeState: r.volume_state,
    hypervisor: r.hypervisor,
  }));
}

/** The state of each of snapshots `ids` that has a row (in no particular order). */
export async function snapshotStatuses(db: Queryable, ids: string[]): Promise<Array<{ id: string; status: SnapshotState; removed: Date | null }>> {
  const { rows } = await db.query<{ id: string; status: SnapshotState; removed: Date | null }>(
    'SELECT id, status, removed FROM snapshots WHERE id = ANY($1::uuid[])',
    [ids],
  );
  return rows;
}

/** The volume a snapshot belongs to, if the snapshot exists. */
export async function volumeIdOfSnapshot(db: Queryable, id: string): Promise<string | undefined> {
  const { rows } = await db.query<{ volume_id: string }>('SELECT volume_id FROM snapshots WHERE id = $1', [id]);
  return rows[0]?.volume_id;
}

/** What each snapshot's backup is or is being written as (its Image ref): full or a delta on a parent. */
export async function backupKindsOf(
  db: Queryable,
  snapshotIds: string[],
): Promise<Map<string, { kind: 'full' | 'incremental'; parentSnapshotId: string | null; chainLength: number }>> {
  const out = new Map<string, { kind: 'full' | 'incremental'; parentSnapshotId: string | null; chainLength: number }>();
  if (snapshotIds.length === 0) return out;
  const { rows } = await db.query(
    `SELECT snapshot_id, parent_snapshot_id, chain_length FROM snapshot_store_ref
      WHERE snapshot_id = ANY($1::uuid[]) AND store_role = 'Image' AND state <> 'Destroyed'`,
    [snapshotIds],
  );
  for (const r of rows) {
    out.set(r.snapshot_id, { kind: r.parent_snapshot_id ? 'incremental' : 'full', parentSnapshotId: r.parent_snapshot_id ?? null, chainLength: r.chain_length });
  }
  return out;
}

/** How many snapshots are in each state (states without any are absent). */
export async function countSnapshotsByState(db: Queryable): Promise<Map<string, number>> {
  const { rows } = await db.query<{ status: string; n: number }>('SELECT status, count(*)::int AS n FROM snapshots GROUP BY status');
  return new Map(rows.map((r) => [r.status, r.n]));
}
