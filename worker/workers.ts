import { resolve } from 'node:path';
import { bundleWorkflowCode, DefaultLogger, Worker, type NativeConnection, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import type { ActivityInterceptorsFactory } from '@temporalio/worker';
import type { Logger } from 'pino';
import type { SnapshotActivities } from '../activities/snapshot-activities.js';

export const WORKFLOWS_PATH = resolve(import.meta.dirname, '..', 'workflows', 'index.ts');

let bundle: Promise<WorkflowBundleWithSourceMap> | undefined;

/** Bundles the workflow code once per process (webpack takes seconds; several workers share it). */
export function workflowBundle(): Promise<WorkflowBundleWithSourceMap> {
  bundle ??= bundleWorkflowCode({ workflowsPath: WORKFLOWS_PATH, logger: new DefaultLogger('WARN') });
  return bundle;
}

export interface WorkerOptions {
  connection: NativeConnection;
  namespace: string;
  taskQueue: string;
  backupTaskQueue: string;
  activities: SnapshotActivities;
  /** `backup.pool.size`: concurrent backups this worker runs. */
  backupPoolSize: number;
  logger: Logger;
  /** More activities for the main worker (storage GC, say); names must not clash with the snapshot activities. */
  extraActivities?: Record<string, (...args: any[]) => Promise<unknown>>;
  /** Activity interceptors for both workers (e.g. the log context of worker/runtime.ts). */
  activityInterceptors?: ActivityInterceptorsFactory[];
}

export interface RunningWorkers {
  workers: Worker[];
  /** Resolves when both workers have stopped. */
  done: Promise<void>;
  shutdown(): Promise<void>;
}

/**
 * Starts the two workers: the main one (workflows and short activities) and the backup one, on its own task
 * queue with its own concurrency limit (the seed's "separate thread pool").
 */
export async function startWorkers(opts: WorkerOptions): Promise<RunningWorkers> {
  const { backupSnapshotToSecondary, ...mainActivities } = opts.activities;
  const main = await Worker.create({
    connection: opts.connection,
    namespace: opts.namespace,
    taskQueue: opts.taskQueue,
    workflowBundle: await workflowBundle(),
    activities: { ...opts.extraActivities, ...mainActivities },
    ...(opts.activityInterceptors ? { interceptors: { activity: opts.activityInterceptors } } : {}),
  });
  const backup = await Worker.create({
    connection: opts.connection,
    namespace: opts.namespace,
    taskQueue: opts.backupTaskQueue,
    activities: { backupSnapshotToSecondary },
    maxConcurrentActivityTaskExecutions: opts.backupPoolSize,
    ...(opts.activityInterceptors ? { interceptors: { activity: opts.activityInterceptors } } : {}),
  });
  const runs = [main, backup].map((w) =>
    w.run().catch((err) => {
      opts.logger.error({ err, taskQueue: w.options.taskQueue }, 'worker stopped with an error');
      throw err;
    }),
  );
  opts.logger.info({ taskQueue: opts.taskQueue, backupTaskQueue: opts.backupTaskQueue, backupPoolSize: opts.backupPoolSize }, 'workers running');
  const done = Promise.allSettled(runs).then(() => undefined);
  return {
    workers: [main, backup],
    done,
    async shutdown() {
      for (const w of [main, backup]) if (w.getState() === 'RUNNING') w.shutdown();
      await done;
    },
  };
}
