import { resolve } from 'node:path';
import { bundleWorkflowCode, DefaultLogger, Worker, type NativeConnection, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import type { ActivityInterceptorsFactory } from '@temporalio/worker';
import type { Logger } from 'pino';
import type { SnapshotActivities } from '../activities/snapshot-activities.js';
import { declareActivityOnlyQueue } from './runtime.js';

/** Seconds after the grace before the SDK abandons activities that ignore their cancellation. */
export const SHUTDOWN_FORCE_MARGIN_SECONDS = 15;

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
  /** On shutdown, how long running activities may go on before they are cancelled (WORKER_SHUTDOWN_GRACE_SECONDS). */
  shutdownGraceSeconds: number;
  logger: Logger;
  /** More activities for the main worker (storage GC, say); names must not clash with the snapshot activities. */
  extraActivities?: Record<string, (...args: any[]) => Promise<unknown>>;
  /** Activity interceptors for both workers (e.g. the log context of app/runtime.ts). */
  activityInterceptors?: ActivityInterceptorsFactory[];
  /** The host worker of the KVM host this process is (its libvirt steps), on that host's own task queue. */
  host?: { name: string; taskQueue: string; activities: Record<string, (...args: any[]) => Promise<unknown>> };
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
  // Cancelled activities get a little while to report before the SDK gives up on them (and the process would
  // exit by force a margin later, app/process.ts).
  const shutdown = {
    shutdownGraceTime: opts.shutdownGraceSeconds * 1000,
    shutdownForceTime: (opts.shutdownGraceSeconds + SHUTDOWN_FORCE_MARGIN_SECONDS) * 1000,
  };
  const main = await Worker.create({
    ...shutdown,
    connection: opts.connection,
    namespace: opts.namespace,
    taskQueue: opts.taskQueue,
    workflowBundle: await workflowBundle(),
    activities: { ...opts.extraActivities, ...mainActivities },
    ...(opts.activityInterceptors ? { interceptors: { activity: opts.activityInterceptors } } : {}),
  });
  // Activities only, on purpose: the SDK's "No workflows registered" warning for it is expected (kept at debug).
  declareActivityOnlyQueue(opts.backupTaskQueue);
  const backup = await Worker.create({
    ...shutdown,
    connection: opts.connection,
    namespace: opts.namespace,
    taskQueue: opts.backupTaskQueue,
    activities: { backupSnapshotToSecondary },
    maxConcurrentActivityTaskExecutions: opts.backupPoolSize,
    ...(opts.activityInterceptors ? { interceptors: { activity: opts.activityInterceptors } } : {}),
  });
  let host: Worker | undefined;
  if (opts.host) {
    declareActivityOnlyQueue(opts.host.taskQueue);
    host = await Worker.create({
      ...shutdown,
      connection: opts.connection,
      namespace: opts.namespace,
      taskQueue: opts.host.taskQueue,
      activities: opts.host.activities,
      ...(opts.activityInterceptors ? { interceptors: { activity: opts.activityInterceptors } } : {}),
    });
  }
  const all = host ? [main, backup, host] : [main, backup];
  const runs = all.map((w) =>
    w.run().catch((err) => {
      opts.logger.error({ err, taskQueue: w.options.taskQueue }, 'worker stopped with an error');
      throw err;
    }),
  );
  opts.logger.info(
    {
      taskQueue: opts.taskQueue,
      backupTaskQueue: opts.backupTaskQueue,
      backupPoolSize: opts.backupPoolSize,
      roles: {
        [opts.taskQueue]: 'workflows and short activities',
        [opts.backupTaskQueue]: `backup copies only (activities, no workflows; at most ${opts.backupPoolSize} at once)`,
        ...(opts.host ? { [opts.host.taskQueue]: `host ${opts.host.name}: its VMs' libvirt steps and live snapshots` } : {}),
      },
    },
    `workers running: ${opts.taskQueue} (workflows and short activities), ${opts.backupTaskQueue} (backup copies only: activities, no workflows)` +
      (opts.host ? `, ${opts.host.taskQueue} (host ${opts.host.name})` : ''),
  );
  const done = Promise.allSettled(runs).then(() => undefined);
  let stopped: Promise<void> | undefined;
  return {
    workers: all,
    done,
    shutdown() {
      stopped ??= (async () => {
        opts.logger.info({ graceSeconds: opts.shutdownGraceSeconds }, 'workers draining: no new tasks; running ones may finish');
        for (const w of all) if (w.getState() === 'RUNNING') w.shutdown();
        await done;
        opts.logger.info('workers stopped');
      })();
      return stopped;
    },
  };
}
