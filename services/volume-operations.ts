import type { Logger } from 'pino';
import type { Pool } from '../db/pool.js';
import { heartbeatVolumeOperation } from '../db/volumes.js';

/** How often long storage work refreshes its volume's `pending_heartbeat` (ms). */
export const VOLUME_HEARTBEAT_MS = 10_000;
/**
 * A transitional volume whose heartbeat is older than this (s) belongs to a process that died: the reconciler
 * (services/volume-reconcile.ts) finishes or undoes its operation. Many heartbeats long, so a busy event loop
 * or a slow database never makes a live operation look dead.
 */
export const VOLUME_STALE_AFTER_SECONDS = 120;

/**
 * Runs long storage work for operation `token` on volume `volumeId` outside any transaction (no pooled
 * connection or row lock is held meanwhile), refreshing the volume's heartbeat so the reconciler leaves it alone.
 */
export async function withVolumeHeartbeat<T>(
  deps: { pool: Pool; logger: Logger },
  volumeId: string,
  token: string,
  work: () => Promise<T>,
  heartbeatMs = VOLUME_HEARTBEAT_MS,
): Promise<T> {
  const timer = setInterval(() => {
    heartbeatVolumeOperation(deps.pool, volumeId, token).then(
      (ours) => {
        if (!ours) deps.logger.warn({ volumeId, token }, 'volume operation was taken over by the reconciler while running');
      },
      (err: unknown) => deps.logger.warn({ err, volumeId }, 'volume heartbeat failed'),
    );
  }, heartbeatMs);
  timer.unref();
  try {
    return await work();
  } finally {
    clearInterval(timer);
  }
}
