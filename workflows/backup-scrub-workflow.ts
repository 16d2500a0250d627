import { continueAsNew, log, proxyActivities, setCurrentDetails, workflowInfo } from '@temporalio/workflow';
import type { BackupScrubActivities, ScrubFault } from '../activities/backup-scrub-activities.js';

export interface BackupScrubInput {
  trigger?: 'schedule' | 'manual';
  /** Carried over continue-as-new: what the run did so far, and refs that failed in it. */
  sofar?: BackupScrubResult;
  exclude?: string[];
}

/** What one scrub run did (also the answer of `POST /api/v1/storage/scrub`). */
export interface BackupScrubResult {
  trigger: 'schedule' | 'manual';
  verified: number;
  bytesRead: number;
  faulty: ScrubFault[];
  failures: Array<{ snapshotId: string; error: string }>;
}

const scrub = proxyActivities<BackupScrubActivities>({
  startToCloseTimeout: '2 hours',
  // Each read heartbeats; a worker that died mid-batch is noticed within this and the batch runs again.
  heartbeatTimeout: '2 minutes',
  retry: { maximumAttempts: 3, initialInterval: '10 seconds', backoffCoefficient: 2 },
});

/**
 * The backup scrub (docs/design.md §14): batch after batch, re-hashes every stored backup not found matching
 * recently, until none is left. A fault is marked and evented by the activity; the run only reports.
 */
export async function backupScrubWorkflow(input: BackupScrubInput = {}): Promise<BackupScrubResult> {
  const trigger = input.trigger ?? 'manual';
  const result: BackupScrubResult = input.sofar ?? { trigger, verified: 0, bytesRead: 0, faulty: [], failures: [] };
  const exclude = [...(input.exclude ?? [])];
  for (;;) {
    setCurrentDetails(`**scrubbing** — ${result.verified} backup(s) match, ${result.faulty.length} faulty so far`);
    const batch = await scrub.scrubBackups({ exclude });
    result.verified += batch.verified.length;
    result.bytesRead += batch.bytesRead;
    result.faulty.push(...batch.faulty);
    for (const f of batch.failures) {
      exclude.push(f.refId);
      result.failures.push({ snapshotId: f.snapshotId, error: f.error });
    }
    if (batch.done) break;
    if (workflowInfo().historyLength > 2000) await continueAsNew<typeof backupScrubWorkflow>({ trigger, sofar: result, exclude });
  }
  setCurrentDetails(
    `**done** — ${result.verified} backup(s) match their checksum, ${result.faulty.length} faulty, ` +
      `${result.failures.length} left for the next run`,
  );
  if (result.faulty.length > 0) log.error('backup scrub found faulty backups', { trigger, faulty: result.faulty });
  else log.info('backup scrub finished', { trigger, verified: result.verified, failures: result.failures.length });
  return result;
}
