/**
 * Bench-only: the orchestration floor for P4. The same shape as workflows/snapshot-workflow.ts on its success
 * path (started with Update-with-Start, the update resolves after the first activity (a local activity when the
 * snapshot workflow uses one), a second activity on a separate task queue with the backup's timeouts and retry policy) but the activities do nothing and there
 * are no search-attribute upserts, details, database rows or qemu-img calls.
 */
import { allHandlersFinished, condition, defineUpdate, proxyActivities, proxyLocalActivities, setHandler } from '@temporalio/workflow';

export interface NoopActivities {
  noopCreateOnPrimary(input: { snapshotId: string }): Promise<{ sizeBytes: number }>;
  noopBackup(input: { snapshotId: string }): Promise<{ installPath: string }>;
}

export interface NoopWorkflowInput {
  snapshotId: string;
  backupTaskQueue: string;
  /** Mirror a snapshot workflow that creates on primary in a local activity (inside the first workflow task). */
  primaryAsLocalActivity?: boolean;
}

export const noopCreatedUpdate = defineUpdate<{ snapshotId: string; state: string }>('noopCreated');

const PRIMARY_OPTIONS = { startToCloseTimeout: '2 minutes', retry: { maximumAttempts: 3, initialInterval: '1 second' } } as const;
const primary = proxyActivities<NoopActivities>(PRIMARY_OPTIONS);
const primaryLocal = proxyLocalActivities<NoopActivities>(PRIMARY_OPTIONS);

export async function noopSnapshotWorkflow(input: NoopWorkflowInput): Promise<{ snapshotId: string; installPath: string }> {
  let state = 'Creating';
  setHandler(noopCreatedUpdate, async () => {
    await condition(() => state !== 'Creating');
    return { snapshotId: input.snapshotId, state };
  });
  await (input.primaryAsLocalActivity ? primaryLocal : primary).noopCreateOnPrimary({ snapshotId: input.snapshotId });
  state = 'CreatedOnPrimary';
  const backup = proxyActivities<NoopActivities>({
    taskQueue: input.backupTaskQueue,
    startToCloseTimeout: '24 hours',
    heartbeatTimeout: '20 seconds',
    retry: { maximumAttempts: 3, initialInterval: '300 seconds', maximumInterval: '300 seconds', backoffCoefficient: 1 },
  });
  const { installPath } = await backup.noopBackup({ snapshotId: input.snapshotId });
  state = 'BackedUp';
  await condition(allHandlersFinished);
  return { snapshotId: input.snapshotId, installPath };
}
