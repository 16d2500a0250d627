/**
 * Set-based seeding for P6 (scale curves): snapshot rows with their store refs and events, inserted by one
 * INSERT … SELECT generate_series statement per step, on accounts and volumes of their own (other phases never
 * see them), and removed again at the end. Bench-only SQL: the layer rules (eslint.config.js) let bench/ use the
 * pool directly; nothing in the service reads this module.
 */
import type { Pool } from '../../db/pool.js';

export interface SeedScope {
  /** The accounts whose rows are seeded (P6's own, created over HTTP). */
  accountIds: string[];
  /** The "busy" volume (a real one, holding a backup in flight): every 10th seeded snapshot is one of its. */
  busyVolumeId: string;
  /** Volumes seeded per account besides the busy one. */
  volumesPerAccount: number;
}

export interface SeededVolumes {
  /** Seeded (fake, no image on disk) volume ids, per account in `accountIds` order. */
  byAccount: string[][];
}

/** Inserts the fake volumes the seeded snapshots belong to (state Ready, a path that does not exist). */
export async function seedVolumes(pool: Pool, scope: SeedScope): Promise<SeededVolumes> {
  const byAccount: string[][] = [];
  for (const accountId of scope.accountIds) {
    const { rows } = await pool.query<{ id: string }>(
      `INSERT INTO volumes (id, account_id, name, type, hypervisor, size_bytes, pool_id, path, format, state)
       SELECT v.id, $1, 'p6-seed-' || v.g, 'DATADISK', 'KVM', 1073741824,
              (SELECT id FROM storage_pools WHERE hypervisor = 'KVM' ORDER BY created, name LIMIT 1),
              '/nonexistent/volsnap-p6/' || v.id || '.qcow2', 'qcow2', 'Ready'
         FROM (SELECT g, gen_random_uuid() AS id FROM generate_series(1, $2::int) g) v
       RETURNING id`,
      [accountId, scope.volumesPerAccount],
    );
    byAccount.push(rows.map((r) => r.id));
  }
  return { byAccount };
}

/**
 * Adds snapshots number `from`..`to` (1-based, over the whole run) with their Primary and Image store refs and
 * three events each (Creating, CreatedOnPrimary, BackedUp), in one statement. The mix: every 10th snapshot is the
 * busy volume's (account 0); the rest round-robin over the accounts and their seeded volumes; 1 in 10 Destroyed
 * (refs Destroyed, a fourth event), the rest BackedUp; the last `errors` of the range are Error (on seeded
 * volumes: storage GC cleans them, finding no image). `created` grows with the number (the oldest first), all in
 * the past. Returns the number of events inserted.
 */
export async function seedSnapshots(pool: Pool, scope: SeedScope, vols: SeededVolumes, from: number, to: number, errors: number): Promise<number> {
  const nAcc = scope.accountIds.length;
  const { rows } = await pool.query<{ events: number }>(
    `WITH params AS (
       SELECT $1::uuid[] AS accounts, $2::uuid[] AS vols, $3::int AS per_acc, $4::uuid AS busy,
              (SELECT id FROM image_stores ORDER BY created, name LIMIT 1) AS store,
              (SELECT id FROM storage_pools WHERE hypervisor = 'KVM' ORDER BY created, name LIMIT 1) AS pool
     ),
     src AS (
       SELECT g, gen_random_uuid() AS id,
              CASE WHEN g % 10 = 0 THEN 0 ELSE g % $7 END AS acc,
              CASE WHEN g > $6 - $8 THEN 'Error'
                   WHEN g % 10 = 3 THEN 'Destroyed'
                   ELSE 'BackedUp' END AS status,
              now() - make_interval(secs => 400000 - g) AS created
         FROM generate_series($5::int, $6::int) g
     ),
     rows AS (
       SELECT s.*, p.store, p.pool, p.accounts[s.acc + 1] AS account_id,
              CASE WHEN s.g % 10 = 0 AND s.status <> 'Error' THEN p.busy
                   ELSE p.vols[s.acc * p.per_acc + 1 + (s.g / 10) % p.per_acc] END AS volume_id
         FROM src s CROSS JOIN params p
     ),
     snaps AS (
       INSERT INTO snapshots (id, account_id, volume_id, volume_type, name, status, async_backup, workflow_id,
                              size, physical_size, backup_max_attempts, backup_retry_interval, backup_attempts,
                              backup_bytes_done, backup_bytes_total, last_error, created, updated, removed,
                              backup_incremental, snapshot_delta_max)
       SELECT id, account_id, volume_id, 'DATADISK', 'p6-snap-' || g, status, true, 'p6-seed-' || id,
              1073741824, 1048576, 3, 300, 1, 1048576, 1048576,
              CASE WHEN status = 'Error' THEN 'seeded: backup failed' END,
              created, created + interval '2 seconds', CASE WHEN status = 'Destroyed' THEN created + interval '1 day' END,
              false, 16
         FROM rows
       RETURNING id
     ),
     refs AS (
       INSERT INTO snapshot_store_ref (snapshot_id, store_role, store_id, install_path, state, size, checksum, created, last_updated)
       SELECT r.id, role, CASE WHEN role = 'Primary' THEN r.pool ELSE r.store END,
              CASE WHEN role = 'Primary' THEN r.id::text ELSE 'snapshots/' || r.account_id || '/' || r.volume_id || '/' || r.id || '.qcow2' END,
              CASE WHEN r.status = 'Destroyed' THEN 'Destroyed'
                   WHEN r.status = 'Error' AND role = 'Image' THEN 'Creating' ELSE 'Ready' END,
              1048576, CASE WHEN role = 'Image' AND r.status <> 'Error' THEN md5(r.id::text) END,
              r.created, r.created + interval '2 seconds'
         FROM rows r CROSS JOIN unnest(ARRAY['Primary', 'Image']) role
        WHERE r.id IN (SELECT id FROM snaps)
       RETURNING 1
     ),
     evs AS (
       INSERT INTO events (type, level, account_id, resource_type, resource_id, description, details, created)
       SELECT e.type, CASE WHEN e.to_state = 'Error' THEN 'ERROR' ELSE 'INFO' END, r.account_id, 'Snapshot', r.id::text,
              'snapshot p6-snap-' || r.g || ' ' || e.from_state || ' -> ' || e.to_state,
              jsonb_build_object('snapshotId', r.id, 'volumeId', r.volume_id, 'from', e.from_state, 'to', e.to_state),
              r.created + make_interval(secs => e.n)
         FROM rows r
         CROSS JOIN LATERAL (VALUES
           (1, 'SNAPSHOT.CREATE', 'Allocated', 'Creating'),
           (2, 'SNAPSHOT.CREATE', 'Creating', 'CreatedOnPrimary'),
           (3, 'SNAPSHOT.BACKUP', 'CreatedOnPrimary', CASE WHEN r.status = 'Error' THEN 'Error' ELSE 'BackedUp' END),
           (4, 'SNAPSHOT.DELETE', 'BackedUp', 'Destroyed')
         ) AS e(n, type, from_state, to_state)
        WHERE (e.n < 4 OR r.status = 'Destroyed') AND r.id IN (SELECT id FROM snaps)
        ORDER BY r.g, e.n
       RETURNING 1
     )
     SELECT (SELECT count(*) FROM evs)::int AS events, (SELECT count(*) FROM refs)::int AS refs`,
    [scope.accountIds, vols.byAccount.flat(), scope.volumesPerAccount, scope.busyVolumeId, from, to, nAcc, errors],
  );
  return rows[0]!.events;
}

/** Refreshes the planner's statistics after a step (autovacuum would, later). */
export async function analyzeSeeded(pool: Pool): Promise<void> {
  await pool.query('ANALYZE snapshots, snapshot_store_ref, events, volumes');
}

/** Removes every seeded row: the seeded snapshots' events and refs, the snapshots, the fake volumes. */
export async function removeSeeded(pool: Pool, scope: SeedScope, vols: SeededVolumes): Promise<{ snapshots: number; events: number }> {
  const seededVols = vols.byAccount.flat();
  const ev = await pool.query(
    `DELETE FROM events WHERE resource_type = 'Snapshot' AND resource_id IN (
       SELECT id::text FROM snapshots WHERE workflow_id LIKE 'p6-seed-%' AND account_id = ANY($1::uuid[]))`,
    [scope.accountIds],
  );
  await pool.query(
    `DELETE FROM snapshot_store_ref WHERE snapshot_id IN (SELECT id FROM snapshots WHERE workflow_id LIKE 'p6-seed-%' AND account_id = ANY($1::uuid[]))`,
    [scope.accountIds],
  );
  const sn = await pool.query(`DELETE FROM snapshots WHERE workflow_id LIKE 'p6-seed-%' AND account_id = ANY($1::uuid[])`, [scope.accountIds]);
  await pool.query('DELETE FROM volumes WHERE id = ANY($1::uuid[])', [seededVols]);
  await pool.query('ANALYZE snapshots, snapshot_store_ref, events, volumes');
  return { snapshots: sn.rowCount ?? 0, events: ev.rowCount ?? 0 };
}

/** EXPLAIN (ANALYZE, BUFFERS) of a query, as text lines (for the results: which plan each measured query took). */
export async function explain(pool: Pool, sql: string, params: unknown[]): Promise<string[]> {
  const { rows } = await pool.query(`EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) ${sql}`, params);
  return rows.map((r) => String(r['QUERY PLAN']));
}
