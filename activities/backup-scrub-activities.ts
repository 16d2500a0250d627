/**
 * The backup scrub's work (docs/design.md §14): re-hash stored backups against the checksum recorded when each
 * was written, at a bounded rate, and mark a mismatch as a fault on the backup and on every backup whose chain
 * holds it (services/backup-faults.ts). Read-only on files; every mark is conditional on the ref being what was
 * read, so a re-delivered or overlapping batch is harmless.
 */
import { Context } from '@temporalio/activity';
import type { Logger } from 'pino';
import { backupsToScrub, markScrubVerified, type ScrubCandidate } from '../db/backup-scrub.js';
import type { Pool } from '../db/pool.js';
import { readSettings } from '../db/settings.js';
import { recordBackupFault } from '../services/backup-faults.js';
import { sha256File, sha256Hex } from '../storage/common.js';
import { resolveInstallPath } from '../storage/paths.js';

const MiB = 1024 * 1024;
/** Backups per activity call: the workflow's history grows by one activity per batch. */
const BATCH = 25;

export interface BackupScrubActivityDeps {
  pool: Pool;
  logger: Logger;
}

export interface ScrubFault {
  snapshotId: string;
  fault: string;
  /** Backups whose chain holds it, marked with it. */
  dependants: string[];
}

export interface ScrubBatchResult {
  /** Snapshots whose backup matched its checksum. */
  verified: string[];
  faulty: ScrubFault[];
  /** Refs that could not be read for a reason that is not the backup's (left for the next run). */
  failures: Array<{ refId: string; snapshotId: string; error: string }>;
  bytesRead: number;
  /** No backup is left to look at in this run. */
  done: boolean;
}

/** Read errors that mean the backup itself is gone or unreadable, not that the store is misconfigured. */
const BACKUP_LOST = new Set(['ENOENT', 'EIO', 'EISDIR']);

export function createBackupScrubActivities(deps: BackupScrubActivityDeps) {
  const { pool } = deps;
  const log = deps.logger.child({ component: 'backup-scrub' });

  async function hashOf(c: ScrubCandidate, bytesPerSecond: number, progress: (n: number) => void) {
    const file = resolveInstallPath(c.storePath, c.installPath);
    const signal = Context.current().cancellationSignal;
    try {
      return { sha: await sha256File(file, signal, { bytesPerSecond, onRead: progress }) };
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code && BACKUP_LOST.has(code)) return { lost: code === 'ENOENT' ? 'its file is missing' : `its file cannot be read (${code})` };
      throw err;
    }
  }

  return {
    /**
     * Re-hashes the next batch of backups not found matching within `backup.scrub.reverify` (never-scrubbed
     * first), skipping `exclude` (refs that failed earlier in this run). Heartbeats with each read.
     */
    async scrubBackups(input: { exclude?: string[] } = {}): Promise<ScrubBatchResult> {
      const settings = await readSettings(pool);
      const verifiedBefore = new Date(Date.now() - settings['backup.scrub.reverify'] * 1000);
      const bytesPerSecond = settings['backup.scrub.rate'] * MiB;
      const batch = await backupsToScrub(pool, { verifiedBefore, limit: BATCH, exclude: input.exclude ?? [] });
      const result: ScrubBatchResult = { verified: [], faulty: [], failures: [], bytesRead: 0, done: batch.length < BATCH };
      for (const c of batch) {
        const slog = log.child({ snapshotId: c.snapshotId, volumeId: c.volumeId });
        let read = 0;
        const beat = () => Context.current().heartbeat({ snapshotId: c.snapshotId, bytesRead: read });
        beat();
        try {
          const hashed = await hashOf(c, bytesPerSecond, (n) => ((read = n), beat()));
          result.bytesRead += read;
          const want = sha256Hex(c.checksum);
          if (hashed.sha === want) {
            if (await markScrubVerified(pool, { refId: c.refId, checksum: c.checksum })) result.verified.push(c.snapshotId);
            continue;
          }
          const fault = hashed.lost ?? `its sha256 is ${hashed.sha}, not the ${want} recorded when it was written`;
          const marked = await recordBackupFault(pool, slog, { snapshotId: c.snapshotId, checksum: c.checksum, fault, foundBy: 'scrub' });
          // Null: the ref changed while it was read (a new attempt, a delete): not a fault of what is stored.
          if (marked) result.faulty.push({ snapshotId: c.snapshotId, fault, dependants: marked.dependants.map((d) => d.snapshotId) });
        } catch (err) {
          if (Context.current().cancellationSignal.aborted) throw err;
          slog.warn({ err }, 'backup scrub could not read a backup; the next run tries again');
          result.failures.push({ refId: c.refId, snapshotId: c.snapshotId, error: err instanceof Error ? err.message : String(err) });
        }
      }
      return result;
    },
  };
}

export type BackupScrubActivities = ReturnType<typeof createBackupScrubActivities>;
