import type { Queryable } from './pool.js';

/** CloudStack's job status: 0 pending, 1 succeeded, 2 failed. */
export type JobStatus = 0 | 1 | 2;

/** An `async_jobs` row (the CloudStack API dialect's async jobs). */
export interface AsyncJobRecord {
  id: string;
  accountId: string;
  command: string;
  cmd: string;
  params: Record<string, string>;
  status: JobStatus;
  resultCode: number;
  resultType: string;
  result: unknown;
  instanceType: string | null;
  instanceId: string | null;
  owner: string;
  drives: number;
  createdAt: string;
  completedAt: string | null;
}

export function toAsyncJobRecord(r: Record<string, any>): AsyncJobRecord {
  return {
    id: r.id,
    accountId: r.account_id,
    command: r.command,
    cmd: r.cmd,
    params: r.params ?? {},
    status: r.status,
    resultCode: r.result_code,
    resultType: r.result_type,
    result: r.result ?? null,
    instanceType: r.instance_type,
    instanceId: r.instance_id,
    owner: r.owner,
    drives: r.drives,
    createdAt: new Date(r.created).toISOString(),
    completedAt: r.completed ? new Date(r.completed).toISOString() : null,
  };
}

export interface NewAsyncJob {
  id: string;
  accountId: string;
  command: string;
  cmd: string;
  params: Record<string, string>;
  instanceType: string | null;
  instanceId: string | null;
  owner: string;
}

export async function insertAsyncJob(db: Queryable, j: NewAsyncJob): Promise<AsyncJobRecord> {
  const { rows } = await db.query(
    `INSERT INTO async_jobs (id, account_id, command, cmd, params, instance_type, instance_id, owner)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *`,
    [j.id, j.accountId, j.command, j.cmd, JSON.stringify(j.params), j.instanceType, j.instanceId, j.owner],
  );
  return toAsyncJobRecord(rows[0]);
}

/** Records the instance a job works on once it is known (a create's new id). */
export async function setAsyncJobInstance(db: Queryable, id: string, instanceType: string, instanceId: string): Promise<void> {
  await db.query('UPDATE async_jobs SET instance_type = $2, instance_id = $3 WHERE id = $1', [id, instanceType, instanceId]);
}

/** Ends a pending job; false if it was not pending any more (or not ours: another replica claimed it). */
export async function finishAsyncJob(
  db: Queryable,
  id: string,
  owner: string,
  outcome: { status: 1 | 2; resultCode: number; result: unknown; instanceType?: string | null; instanceId?: string | null },
): Promise<boolean> {
  const { rowCount } = await db.query(
    `UPDATE async_jobs SET status = $3, result_code = $4, result = $5, completed = now(),
            instance_type = COALESCE($6, instance_type), instance_id = COALESCE($7, instance_id)
      WHERE id = $1 AND owner = $2 AND status = 0`,
    [id, owner, outcome.status, outcome.resultCode, JSON.stringify(outcome.result), outcome.instanceType ?? null, outcome.instanceId ?? null],
  );
  return (rowCount ?? 0) > 0;
}

/** A job by id, in `ownerId`'s account unless null (an admin). */
export async function findAsyncJob(db: Queryable, id: string, ownerId: string | null): Promise<AsyncJobRecord | undefined> {
  const { rows } = await db.query('SELECT * FROM async_jobs WHERE id = $1 AND ($2::uuid IS NULL OR account_id = $2)', [id, ownerId]);
  return rows[0] ? toAsyncJobRecord(rows[0]) : undefined;
}

/** Jobs, newest first, one page; with the total. */
export async function listAsyncJobs(
  db: Queryable,
  ownerId: string | null,
  opts: { startDate?: string; limit: number; offset: number },
): Promise<{ count: number; jobs: AsyncJobRecord[] }> {
  const where = `($1::uuid IS NULL OR account_id = $1) AND ($2::timestamptz IS NULL OR created >= $2)`;
  const args = [ownerId, opts.startDate ?? null];
  const total = await db.query(`SELECT count(*)::int AS n FROM async_jobs WHERE ${where}`, args);
  const { rows } = await db.query(`SELECT * FROM async_jobs WHERE ${where} ORDER BY created DESC, id LIMIT $3 OFFSET $4`, [...args, opts.limit, opts.offset]);
  return { count: total.rows[0].n, jobs: rows.map(toAsyncJobRecord) };
}

/** Touches the heartbeat of every pending job `owner` runs. */
export async function heartbeatAsyncJobs(db: Queryable, owner: string): Promise<void> {
  await db.query('UPDATE async_jobs SET heartbeat = now() WHERE owner = $1 AND status = 0', [owner]);
}

/**
 * Claims the pending jobs whose runner went silent for `staleSeconds` (its replica crashed or was killed):
 * they become `owner`'s, drive count incremented, and are returned to be re-driven or failed.
 */
export async function claimStaleAsyncJobs(db: Queryable, owner: string, staleSeconds: number): Promise<AsyncJobRecord[]> {
  const { rows } = await db.query(
    `UPDATE async_jobs SET owner = $1, heartbeat = now(), drives = drives + 1
      WHERE id IN (SELECT id FROM async_jobs WHERE status = 0 AND owner <> $1 AND heartbeat < now() - make_interval(secs => $2)
                   FOR UPDATE SKIP LOCKED)
      RETURNING *`,
    [owner, staleSeconds],
  );
  return rows.map(toAsyncJobRecord);
}

/** The snapshot a (globally unique) idempotency key created, if it exists yet: a create job learns its id. */
export async function snapshotIdByIdempotencyKey(db: Queryable, key: string): Promise<string | undefined> {
  const { rows } = await db.query('SELECT id FROM snapshots WHERE idempotency_key = $1 LIMIT 1', [key]);
  return rows[0]?.id;
}
