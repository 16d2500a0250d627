/**
 * The bench's no-op worker pair (bench/noop-workflow.ts) on its own task queues, in this process, against the
 * stack's Temporal server: the orchestration floor that P1 and P4 compare against.
 */
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { WithStartWorkflowOperation } from '@temporalio/client';
import { bundleWorkflowCode, DefaultLogger, NativeConnection, Worker, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import type { TestStack } from '../../harness/stack.js';
import { noopCreatedUpdate, type NoopActivities, type noopSnapshotWorkflow } from '../noop-workflow.js';

export const BENCH_TASK_QUEUE = 'volsnap-bench';
export const BENCH_BACKUP_TASK_QUEUE = 'volsnap-bench-backup';

export function bundleNoopWorkflow(benchDir: string): Promise<WorkflowBundleWithSourceMap> {
  return bundleWorkflowCode({ workflowsPath: join(benchDir, 'noop-workflow.ts'), logger: new DefaultLogger('WARN') });
}

export interface NoopWorkers {
  /** Update-with-Start of one no-op workflow; resolves when the update ("created") returns. */
  startOne(): Promise<{ workflowId: string; ms: number }>;
  /** Makes the no-op create on primary in a local activity too (when the snapshot workflow does). */
  mirror(shape: { primaryAsLocalActivity: boolean }): void;
  readonly shape: { primaryAsLocalActivity: boolean };
  stop(): Promise<void>;
}

export async function startNoopWorkers(stack: TestStack, bundle: WorkflowBundleWithSourceMap, backupPoolSize: number): Promise<NoopWorkers> {
  // The stack's server: its dev server, or the cluster's frontend (`npm run bench -- --temporal-address`).
  const connection = await NativeConnection.connect({ address: stack.devServer?.address ?? stack.env.TEMPORAL_ADDRESS! });
  const activities: NoopActivities = {
    async noopCreateOnPrimary() {
      return { sizeBytes: 0 };
    },
    async noopBackup({ snapshotId }) {
      return { installPath: `noop/${snapshotId}` };
    },
  };
  const mainW = await Worker.create({
    connection,
    namespace: stack.env.TEMPORAL_NAMESPACE,
    taskQueue: BENCH_TASK_QUEUE,
    workflowBundle: bundle,
    activities: { noopCreateOnPrimary: activities.noopCreateOnPrimary },
  });
  const backupW = await Worker.create({
    connection,
    namespace: stack.env.TEMPORAL_NAMESPACE,
    taskQueue: BENCH_BACKUP_TASK_QUEUE,
    activities: { noopBackup: activities.noopBackup },
    maxConcurrentActivityTaskExecutions: backupPoolSize,
  });
  const running = Promise.all([mainW.run(), backupW.run()]);
  const shape = { primaryAsLocalActivity: false };
  return {
    shape,
    mirror(s) {
      shape.primaryAsLocalActivity = s.primaryAsLocalActivity;
    },
    async startOne() {
      const snapshotId = randomUUID();
      const workflowId = `bench-noop-${snapshotId}`;
      const t = performance.now();
      await stack.client.workflow.executeUpdateWithStart(noopCreatedUpdate, {
        startWorkflowOperation: new WithStartWorkflowOperation<typeof noopSnapshotWorkflow>('noopSnapshotWorkflow', {
          workflowId,
          taskQueue: BENCH_TASK_QUEUE,
          args: [{ snapshotId, backupTaskQueue: BENCH_BACKUP_TASK_QUEUE, primaryAsLocalActivity: shape.primaryAsLocalActivity }],
          workflowIdConflictPolicy: 'USE_EXISTING',
        }),
      });
      return { workflowId, ms: performance.now() - t };
    },
    async stop() {
      mainW.shutdown();
      backupW.shutdown();
      await running.catch(() => undefined);
      await connection.close();
    },
  };
}
