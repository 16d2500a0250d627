/**
 * Named points in a snapshot's life where a fault test can hold the service (test/faults): the fault matrix
 * arms a point for a volume, the service stops there when it gets to it, the test injects its fault (kills the
 * process, restarts a dependency) knowing exactly where the service is, then releases it. Inert unless
 * VOLSNAP_PAUSE_POINTS_DIR is set, which only the fault tests do.
 *
 * Protocol, all files in that directory: the test creates `<point>@<volumeId>.armed`; the service, on reaching
 * the point for that volume, renames it to `.reached` (so a point holds once: a restarted service passes it)
 * with what it was doing written inside, then waits until `<point>@<volumeId>.go` exists.
 */
import { existsSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export type PausePoint =
  /** The snapshot row is committed Allocated; its workflow is not started yet. */
  | 'allocated'
  /** The primary snapshot exists and CreatedOnPrimary is committed; the caller has not been answered. */
  | 'created-on-primary'
  /**
   * A full copy to the image store is under way (its first progress reported); the backup holds before its
   * rename while the point is held, so a fault always finds it copied at most in part and never published.
   */
  | 'copying'
  /** The same for a delta (changed clusters copied range by range, or a rebase onto the parent backup). */
  | 'copying-delta'
  /** The backup file is renamed into place; BackedUp is not committed. */
  | 'copied'
  /** The compensation deleted the primary snapshot; Error is not committed. */
  | 'compensated'
  /** A user's delete committed Destroying; no file is touched yet. */
  | 'delete-intent'
  /** A delete removed the snapshot's files; Destroyed is not committed. */
  | 'delete-storage-done';

const DIR = process.env.VOLSNAP_PAUSE_POINTS_DIR;

/** Holds here while a fault test has this point armed for this volume; returns at once otherwise. */
export async function pausePoint(point: PausePoint, volumeId: string, detail: Record<string, unknown> = {}): Promise<void> {
  if (!DIR) return;
  const base = path.join(DIR, `${point}@${volumeId}`);
  try {
    renameSync(`${base}.armed`, `${base}.reached`);
  } catch {
    return; // not armed (or already passed)
  }
  writeFileSync(`${base}.reached`, JSON.stringify({ point, volumeId, pid: process.pid, ...detail }));
  while (!existsSync(`${base}.go`)) await sleep(20);
}

/** Whether pause points are on in this process (the fault tests'). */
export const pausePointsOn = (): boolean => DIR !== undefined;
