/**
 * Finishing or undoing a volume operation whose storage work ran outside a transaction (migrate, resize, a
 * new volume from a snapshot) when it failed, or when its process died between its two commits. What is on
 * storage decides: a migration whose source is gone but whose copy is published is finished; one whose source
 * is still there is undone (the copy removed); a resize is completed; a half-created volume is removed.
 * Everything runs under the volume's image lock and ends the operation only if its token is still current,
 * so it is idempotent and safe to run from several processes at once.
 */
import { readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { recordEvent } from '../db/events.js';
import { withImageLock } from '../db/image-locks.js';
import { withTransaction, type Pool } from '../db/pool.js';
import {
  endUntokenedVolumeOperation,
  endVolumeOperation,
  findStuckVolumes,
  movePrimaryRefs,
  type PendingVolumeOperation,
  type VolumeRecord,
} from '../db/volumes.js';
import type { StorageDrivers } from '../storage/driver.js';
import { isFileOf, volumePath as kvmVolumePath } from '../storage/paths.js';
import { restoreChain } from './restore-chain.js';
import { VOLUME_STALE_AFTER_SECONDS } from './volume-operations.js';

export interface VolumeReconcileDeps {
  pool: Pool;
  drivers: StorageDrivers;
  logger: Logger;
}

/** What settling one volume operation did. */
export interface SettledVolume {
  volumeId: string;
  operation: PendingVolumeOperation['op'] | 'unknown';
  previousState: string;
  /** finished: the requested change is in place; undone: the volume is as before; removed: the new volume is gone. */
  outcome: 'finished' | 'undone' | 'removed' | 'error' | 'not-ours';
  removedFiles: string[];
}

export interface VolumeReconcileResult {
  settled: SettledVolume[];
  failures: Array<{ volumeId: string; error: string }>;
}

const codeOf = (err: unknown): string | undefined => (err as NodeJS.ErrnoException | undefined)?.code;

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch (err) {
    if (codeOf(err) === 'ENOENT' || codeOf(err) === 'ENOTDIR') return false;
    throw err;
  }
}

/** Removes `final` (unless `keepFinal`) and its temporary (`.partial-`) siblings; answers what it removed. */
async function removeFileAndTemps(final: string, keepFinal = false): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(path.dirname(final));
  } catch (err) {
    if (codeOf(err) === 'ENOENT' || codeOf(err) === 'ENOTDIR') return [];
    throw err;
  }
  const removed: string[] = [];
  for (const name of names) {
    if (!isFileOf(path.basename(final), name) || (keepFinal && name === path.basename(final))) continue;
    await rm(path.join(path.dirname(final), name), { force: true });
    removed.push(path.join(path.dirname(final), name));
  }
  return removed;
}

/**
 * Settles operation `pending` of `volume` from what storage shows. `why` goes into the event and the log.
 * `mode` 'failed' is the operation's own failure path (a resize is undone); 'reconcile' is a dead process's
 * operation (a resize is completed, as the caller asked).
 */
export async function settleVolumeOperation(
  deps: VolumeReconcileDeps,
  volume: VolumeRecord,
  pending: PendingVolumeOperation | null,
  why: string,
  mode: 'failed' | 'reconcile',
): Promise<SettledVolume> {
  const log = deps.logger.child({ volumeId: volume.id, operation: pending?.op, token: pending?.token, mode });
  const driver = deps.drivers[volume.hypervisor];
  const result: SettledVolume = { volumeId: volume.id, operation: pending?.op ?? 'unknown', previousState: volume.state, outcome: 'not-ours', removedFiles: [] };

  const end = async (
    set: Parameters<typeof endVolumeOperation>[3],
    event: { type: string; description: string; level?: 'INFO' | 'WARN' | 'ERROR' },
    extra?: (tx: Parameters<Parameters<typeof withTransaction>[1]>[0]) => Promise<unknown>,
  ): Promise<boolean> =>
    withTransaction(deps.pool, async (tx) => {
      // No token (a row from before this code, or edited by hand): match on the token column being absent.
      const ended = pending
        ? await endVolumeOperation(tx, volume.id, pending.token, set)
        : await endUntokenedVolumeOperation(tx, volume.id, volume.state);
      if (!ended) return false;
      await extra?.(tx);
      await recordEvent(tx, {
        type: event.type,
        level: event.level ?? 'WARN',
        accountId: volume.accountId,
        resourceType: 'Volume',
        resourceId: volume.id,
        description: event.description,
        details: { volumeId: volume.id, operation: pending?.op ?? null, reason: why, reconciler: mode === 'reconcile', removedFiles: result.removedFiles },
      });
      return true;
    });

  // The image lock keeps this apart from the operation's own publish step and from a concurrent reconciler.
  return withImageLock(
    deps.pool,
    volume.id,
    async () => {
      if (!pending) {
        if (await end({}, { type: 'VOLUME.UPDATE', description: `volume ${volume.name} was ${volume.state} with no record of its operation; set back to Ready (${why})` })) result.outcome = 'undone';
        return result;
      }
      switch (pending.op) {
        case 'migrate': {
          const kvm = volume.hypervisor === 'KVM' && pending.toPath !== '';
          const srcExists = !kvm || (await exists(pending.fromPath));
          const destExists = kvm && (await exists(pending.toPath));
          if (srcExists) {
            // The source is authoritative until the copy replaced it: the copy (whole or partial) goes.
            if (kvm && pending.toPath !== pending.fromPath) result.removedFiles = await removeFileAndTemps(pending.toPath);
            const ok = await end({ state: 'Ready' }, { type: 'VOLUME.MIGRATE', level: 'ERROR', description: `migration of volume ${volume.name} undone: ${why}` });
            result.outcome = ok ? 'undone' : 'not-ours';
          } else if (destExists) {
            // The copy was published and the source removed: only the second commit was missing.
            result.removedFiles = await removeFileAndTemps(pending.toPath, true);
            const ok = await end(
              { state: 'Ready', pool_id: pending.toPoolId, path: pending.toPath },
              { type: 'VOLUME.MIGRATE', description: `migration of volume ${volume.name} to pool ${pending.toPoolId} finished by the reconciler (${why})` },
              (tx) => movePrimaryRefs(tx, volume.id, pending.toPoolId, pending.toPath),
            );
            result.outcome = ok ? 'finished' : 'not-ours';
          } else {
            const ok = await end({ state: 'Error' }, { type: 'VOLUME.MIGRATE', level: 'ERROR', description: `volume ${volume.name} has no image at its source or its destination after a failed migration (${why})` });
            result.outcome = ok ? 'error' : 'not-ours';
          }
          break;
        }
        case 'resize': {
          if (!driver) throw new Error(`no storage driver for ${volume.hypervisor}`);
          // resizeVolume is idempotent (a no-op at the size already there).
          const [first, second] = mode === 'reconcile' ? [pending.toBytes, pending.fromBytes] : [pending.fromBytes, pending.toBytes];
          let size: number;
          try {
            await driver.resizeVolume(volume.path, first);
            size = first;
          } catch (err) {
            log.warn({ err }, 'settling a resize: the preferred size failed, trying the other');
            await driver.resizeVolume(volume.path, second);
            size = second;
          }
          const finished = size === pending.toBytes;
          const ok = await end(
            { state: 'Ready', size_bytes: size },
            finished
              ? { type: 'VOLUME.RESIZE', description: `resize of volume ${volume.name} to ${size} bytes finished by the reconciler (${why})` }
              : { type: 'VOLUME.RESIZE', level: 'ERROR', description: `resize of volume ${volume.name} undone, it stays at ${size} bytes: ${why}` },
          );
          result.outcome = ok ? (finished ? 'finished' : 'undone') : 'not-ours';
          break;
        }
        case 'revert-from-backup': {
          // The active layer was being rewritten from the backup chain: what is there now is neither the old
          // content nor the snapshot's. A dead process's revert is finished (the copy redone, as the caller
          // asked; it rewrites the whole layer, so redoing it is idempotent); a failed one leaves the volume
          // Ready with an ERROR event saying its content is incomplete (revert again).
          if (mode === 'reconcile') {
            if (!driver?.restoreVolumeFromBackup) throw new Error(`no storage driver restoring ${volume.hypervisor} volumes from backups`);
            await driver.restoreVolumeFromBackup(pending.storePath, pending.installPath, volume.path, await restoreChain(deps.pool, pending.snapshotId));
            const ok = await end(
              { state: 'Ready', ...(pending.toBytes ? { size_bytes: pending.toBytes } : {}) },
              { type: 'SNAPSHOT.REVERT', description: `revert of volume ${volume.name} to snapshot ${pending.snapshotId} from its backup finished by the reconciler (${why})` },
            );
            result.outcome = ok ? 'finished' : 'not-ours';
          } else {
            const ok = await end(
              { state: 'Ready' },
              {
                type: 'SNAPSHOT.REVERT',
                level: 'ERROR',
                description: `revert of volume ${volume.name} to snapshot ${pending.snapshotId} from its backup failed part-way; its content is incomplete, revert it again: ${why}`,
              },
            );
            result.outcome = ok ? 'error' : 'not-ours';
          }
          break;
        }
        case 'create-from-snapshot': {
          if (volume.hypervisor === 'KVM') result.removedFiles = await removeFileAndTemps(kvmVolumePath(pending.poolPath, volume.id));
          else if (volume.path && driver) await driver.deleteVolume(volume.path);
          const ok = await end(
            { state: 'Destroyed', removed: new Date() },
            { type: 'VOLUME.CREATE', level: 'ERROR', description: `volume ${volume.name} from snapshot ${pending.snapshotId} was not created: ${why}` },
          );
          result.outcome = ok ? 'removed' : 'not-ours';
          break;
        }
      }
      if (result.outcome !== 'not-ours') log.warn({ outcome: result.outcome, removedFiles: result.removedFiles, reason: why }, 'volume operation settled');
      return result;
    },
    { logger: log },
  );
}

/**
 * Reconciles volumes left in a transitional state by a process that died between its two commits (no
 * heartbeat for `staleAfterSeconds`): each is finished or undone (settleVolumeOperation). Run at start-up and
 * by storage GC's reconcile step; idempotent, and a volume whose operation is alive is never touched.
 */
export async function reconcileStuckVolumes(
  deps: VolumeReconcileDeps,
  opts: { staleAfterSeconds?: number } = {},
): Promise<VolumeReconcileResult> {
  const stale = opts.staleAfterSeconds ?? VOLUME_STALE_AFTER_SECONDS;
  const result: VolumeReconcileResult = { settled: [], failures: [] };
  for (const { volume, pending } of await findStuckVolumes(deps.pool, stale)) {
    try {
      const settled = await settleVolumeOperation(deps, volume, pending, `no heartbeat from its process for more than ${stale} s`, 'reconcile');
      if (settled.outcome !== 'not-ours') result.settled.push(settled);
    } catch (err) {
      deps.logger.error({ err, volumeId: volume.id, state: volume.state }, 'reconciling a volume stuck in a transitional state failed; left for the next run');
      result.failures.push({ volumeId: volume.id, error: err instanceof Error ? err.message : String(err) });
    }
  }
  return result;
}
