import { randomUUID } from 'node:crypto';
import { ScheduleOverlapPolicy, type Client } from '@temporalio/client';
import type { Logger } from 'pino';
import { ensureIntervalSchedule, scheduledTaskQueue, type ScheduleChange } from '../temporal/interval-schedule.js';
import type { StorageGcResult, storageGcWorkflow } from '../workflows/storage-gc-workflow.js';

export type { ScheduleChange, StorageGcResult };

/** The Temporal Schedule that runs storage GC every `storage.cleanup.interval` seconds. */
export const STORAGE_GC_SCHEDULE_ID = 'storage-gc';

/** The task queue the main worker (which runs the GC workflow and its activities) polls by default. */
const DEFAULT_TASK_QUEUE = 'volsnap';
const WORKFLOW_TYPE = 'storageGcWorkflow';

export interface StorageGcScheduleOptions {
  /** The main worker's task queue (TEMPORAL_TASK_QUEUE). */
  taskQueue: string;
  /** `storage.cleanup.interval` in seconds. */
  intervalSeconds: number;
  logger?: Logger;
  /** For tests: the clock. */
  now?: () => number;
}

const NOTE = (s: number) => `storage GC every ${s}s (storage.cleanup.interval); trigger it to run now`;

/**
 * Creates the `storage-gc` Schedule, or brings an existing one to `intervalSeconds` and `taskQueue`
 * (temporal/interval-schedule.ts: idempotent, keeps the phase and an operator's pause).
 */
export async function ensureStorageGcSchedule(client: Client, opts: StorageGcScheduleOptions): Promise<ScheduleChange> {
  return ensureIntervalSchedule(client, {
    scheduleId: STORAGE_GC_SCHEDULE_ID,
    workflowType: WORKFLOW_TYPE,
    taskQueue: opts.taskQueue,
    intervalSeconds: opts.intervalSeconds,
    args: [{ trigger: 'schedule' }],
    summary:
      `Storage GC (every ${opts.intervalSeconds}s): reconcile snapshots whose workflow is gone, clean Error snapshots, ` +
      'remove orphan backup files',
    note: NOTE(opts.intervalSeconds),
    workflowExecutionTimeout: '2 hours',
    logger: opts.logger,
    ...(opts.now ? { now: opts.now } : {}),
  });
}

/** Starts a scheduled run now (what "Trigger" in the Web UI does); does not wait for it. */
export async function triggerStorageGcSchedule(client: Client): Promise<void> {
  await client.schedule.getHandle(STORAGE_GC_SCHEDULE_ID).trigger(ScheduleOverlapPolicy.ALLOW_ALL);
}

/**
 * Runs storage GC now and answers what it cleaned: executes a `storageGcWorkflow` under a unique id
 * (`storage-gc-manual-<uuid>`) and waits for its result. What `POST /api/v1/storage/gc` calls.
 */
export async function runStorageGcNow(client: Client, opts: { taskQueue?: string } = {}): Promise<StorageGcResult> {
  const taskQueue = opts.taskQueue ?? (await scheduledTaskQueue(client, STORAGE_GC_SCHEDULE_ID)) ?? DEFAULT_TASK_QUEUE;
  return client.workflow.execute<typeof storageGcWorkflow>(WORKFLOW_TYPE, {
    workflowId: `${STORAGE_GC_SCHEDULE_ID}-manual-${randomUUID()}`,
    taskQueue,
    args: [{ trigger: 'manual' }],
    // Without a worker the caller must not wait forever.
    workflowExecutionTimeout: '1 hour',
    staticSummary: 'Storage GC run on demand',
  });
}

export interface StorageGcService {
  /** Runs GC now and answers what it cleaned. */
  runNow(): Promise<StorageGcResult>;
  /** Creates or updates the schedule (call when `storage.cleanup.interval` changes). */
  ensureSchedule(intervalSeconds: number): Promise<ScheduleChange>;
  /** Triggers the schedule (a run that is not awaited). */
  trigger(): Promise<void>;
}

/** The GC operations bound to a client and task queue, as the Stack exposes them to the API. */
export function createStorageGcService(deps: { client: Client; taskQueue: string; logger?: Logger }): StorageGcService {
  return {
    runNow: () => runStorageGcNow(deps.client, { taskQueue: deps.taskQueue }),
    ensureSchedule: (intervalSeconds) =>
      ensureStorageGcSchedule(deps.client, { taskQueue: deps.taskQueue, intervalSeconds, ...(deps.logger ? { logger: deps.logger } : {}) }),
    trigger: () => triggerStorageGcSchedule(deps.client),
  };
}
