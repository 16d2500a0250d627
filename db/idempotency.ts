import { toSnapshotRecord, type SnapshotRecord } from './snapshots.js';
import type { Queryable } from './pool.js';

/*
 * Idempotency-Keys of snapshot requests (the IETF httpapi Idempotency-Key draft): each is stored on the snapshot
 * it created, with a fingerprint of the request and the time it expires (snapshots.idempotency_*).
 */

/** The snapshot an account's Idempotency-Key names, with the request's fingerprint and whether the key expired. */
export interface IdempotentRequest {
  snapshot: SnapshotRecord;
  /** sha256 of the request (volume, name, asyncBackup); null for a key stored before fingerprints were. */
  fingerprint: string | null;
  /** Past its expiry (keys stored before expiries were: `ttlSeconds` after the snapshot's creation). */
  expired: boolean;
}

export async function findIdempotentRequest(db: Queryable, accountId: string, key: string, ttlSeconds: number): Promise<IdempotentRequest | undefined> {
  const { rows } = await db.query(
    `SELECT *, coalesce(idempotency_expires, created + make_interval(secs => $3)) <= now() AS idempotency_expired
       FROM snapshots WHERE account_id = $1 AND idempotency_key = $2`,
    [accountId, key, ttlSeconds],
  );
  const r = rows[0];
  return r ? { snapshot: toSnapshotRecord(r), fingerprint: r.idempotency_fingerprint ?? null, expired: Boolean(r.idempotency_expired) } : undefined;
}

/** Records a new snapshot's request fingerprint and when its key expires (`ttlSeconds` from now). */
export async function rememberIdempotentRequest(db: Queryable, snapshotId: string, fingerprint: string, ttlSeconds: number): Promise<void> {
  await db.query(`UPDATE snapshots SET idempotency_fingerprint = $2, idempotency_expires = now() + make_interval(secs => $3) WHERE id = $1`, [
    snapshotId,
    fingerprint,
    ttlSeconds,
  ]);
}

/** Frees an expired key (or one whose snapshot is gone) so it can name a new request. */
export async function releaseIdempotencyKey(db: Queryable, snapshotId: string): Promise<void> {
  await db.query('UPDATE snapshots SET idempotency_key = NULL, idempotency_fingerprint = NULL, idempotency_expires = NULL WHERE id = $1', [snapshotId]);
}
