/**
 * Deleting a Destroyed volume's image from primary storage after the Destroyed state (with the intent,
 * `volumes.pending` = delete-image) is committed: VM destroy and reinstall, volume delete. The image goes under
 * the volume's image lock, like every other writer of it; then the intent is cleared. A crash in between leaves
 * the intent, which start-up and storage GC finish (idempotent: an image already gone is a no-op).
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { withImageLock } from '../db/image-locks.js';
import type { Pool } from '../db/pool.js';
import { endImageDelete, volumesAwaitingImageDelete, type PendingImageDelete, type VolumeRecord } from '../db/volumes.js';
import type { StorageDrivers } from '../storage/driver.js';

export interface VolumeImageDeleteDeps {
  pool: Pool;
  drivers: StorageDrivers;
  logger: Logger;
}

/** The intent to record (markVolumeDestroyed) for deleting `volume`'s image after COMMIT. */
export function imageDeleteIntent(volume: Pick<VolumeRecord, 'path'>): PendingImageDelete {
  return { op: 'delete-image', token: randomUUID(), path: volume.path };
}

/** Deletes the image an intent names, under the volume's image lock, then clears the intent. */
export async function deleteVolumeImage(
  deps: VolumeImageDeleteDeps,
  volume: Pick<VolumeRecord, 'id' | 'hypervisor'>,
  pending: PendingImageDelete,
): Promise<void> {
  const log = deps.logger.child({ volumeId: volume.id, operation: 'delete-image', token: pending.token });
  const driver = deps.drivers[volume.hypervisor];
  if (!driver) throw new Error(`no storage driver for ${volume.hypervisor}`);
  await withImageLock(deps.pool, volume.id, () => driver.deleteVolume(pending.path), { logger: log });
  await endImageDelete(deps.pool, volume.id, pending.token);
  log.info({ path: pending.path }, 'volume image deleted');
}

/** Deletes the images of Destroyed volumes whose deletion a crash interrupted. Run at start-up and by storage GC. */
export async function settleVolumeImageDeletes(deps: VolumeImageDeleteDeps): Promise<{ deleted: string[]; failures: Array<{ volumeId: string; error: string }> }> {
  const result = { deleted: [] as string[], failures: [] as Array<{ volumeId: string; error: string }> };
  for (const { volume, pending } of await volumesAwaitingImageDelete(deps.pool)) {
    try {
      await deleteVolumeImage(deps, volume, pending);
      deps.logger.warn({ volumeId: volume.id, path: pending.path }, 'image of a Destroyed volume left by an interrupted delete removed');
      result.deleted.push(volume.id);
    } catch (err) {
      deps.logger.error({ err, volumeId: volume.id, path: pending.path }, 'deleting the image of a Destroyed volume failed; left for the next run');
      result.failures.push({ volumeId: volume.id, error: err instanceof Error ? err.message : String(err) });
    }
  }
  return result;
}
