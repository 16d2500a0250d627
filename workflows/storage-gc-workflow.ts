import { log, proxyActivities, setCurrentDetails } from '@temporalio/workflow';
import type {
  DestroyedSnapshot,
  GcFailure,
  ReconciledSnapshot,
  RemovedOrphanFile,
  StorageGcActivities,
} from '../activities/storage-gc-activities.js';

export interface StorageGcInput {
  /** Who started this run: the schedule, or an operator / the API on demand. */
  trigger?: 'schedule' | 'manual';
}

/** What one GC run did (also the answer of `POST /api/v1/storage/gc`). */
export interface StorageGcResult {
  trigger: 'schedule' | 'manual';
  /** In-flight snapshots whose workflow was gone, moved to Error (then cleaned below). */
  reconciled: ReconciledSnapshot[];
  /** Error snapshots cleaned and moved to Destroyed. */
  destroyed: DestroyedSnapshot[];
  /** Files under the image stores' `snapshots/` removed because no healthy snapshot owns them. */
  orphanFiles: RemovedOrphanFile[];
  /** Problems left for the next run (the run itself still succeeds). */
  failures: GcFailure[];
  /** Allocated snapshots younger than the grace period, not judged yet. */
  deferred: string[];
  /** False when the worker had no Temporal client for the reconciler. */
  reconcilerRan: boolean;
}

const gc = proxyActivities<StorageGcActivities>({
  startToCloseTimeout: '30 minutes',
  retry: { maximumAttempts: 3, initialInterval: '5 seconds', backoffCoefficient: 2 },
});

/**
 * Storage GC: first the reconciler (in-flight snapshots whose workflow is gone → Error), then every Error
 * snapshot is cleaned (backup files, primary snapshot, store refs) and Destroyed, then orphan backup files
 * are removed. Each step is idempotent, so overlapping or repeated runs are harmless.
 */
export async function storageGcWorkflow(input: StorageGcInput = {}): Promise<StorageGcResult> {
  const trigger = input.trigger ?? 'manual';
  setCurrentDetails('**reconciling** — looking for in-flight snapshots whose workflow is gone');
  const rec = await gc.reconcileInFlightSnapshots();
  setCurrentDetails(`**cleaning Error snapshots** — reconciler moved ${rec.reconciled.length} snapshot(s) to Error`);
  const cleaned = await gc.cleanErrorSnapshots();
  setCurrentDetails(`**removing orphan files** — ${cleaned.destroyed.length} Error snapshot(s) destroyed`);
  const orphans = await gc.removeOrphanBackupFiles();

  const result: StorageGcResult = {
    trigger,
    reconciled: rec.reconciled,
    destroyed: cleaned.destroyed,
    orphanFiles: orphans.removed,
    failures: [...rec.failures, ...cleaned.failures, ...orphans.failures],
    deferred: rec.deferred,
    reconcilerRan: !rec.skipped,
  };
  const summary = {
    reconciled: result.reconciled.length,
    destroyed: result.destroyed.length,
    orphanFiles: result.orphanFiles.length,
    failures: result.failures.length,
  };
  setCurrentDetails(
    `**done** — reconciled ${summary.reconciled}, destroyed ${summary.destroyed} Error snapshot(s), ` +
      `removed ${summary.orphanFiles} orphan file(s), ${summary.failures} problem(s) left for the next run`,
  );
  if (summary.failures > 0) log.warn('storage GC finished with problems', { ...summary, trigger, failuresDetail: result.failures });
  else log.info('storage GC finished', { ...summary, trigger });
  return result;
}
