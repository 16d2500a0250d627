import { randomUUID } from 'node:crypto';
import { ScheduleAlreadyRunning, ScheduleNotFoundError, ScheduleOverlapPolicy, type Client } from '@temporalio/client';
import type { Logger } from 'pino';
import type { StorageGcResult, storageGcWorkflow } from '../workflows/storage-gc-workflow.js';

export type { StorageGcResult };

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

export type ScheduleChange = 'created' | 'updated' | 'unchanged';

/**
 * The interval spec: every `intervalSeconds`, phased so the first run comes one full interval after now (an
 * epoch-aligned hourly run would otherwise fire at the next full hour, minutes after a fresh start).
 */
function intervalSpec(intervalSeconds: number, nowMs: number) {
  const nowSec = Math.floor(nowMs / 1000);
  // 30 s of margin: the match just before "now" must lie before the schedule exists, or it would fire at once.
  const offset = (((nowSec - 30) % intervalSeconds) + intervalSeconds) % intervalSeconds;
  return { intervals: [{ every: `${intervalSeconds}s`, offset: `${offset}s` }] };
}

function startAction(taskQueue: string, intervalSeconds: number) {
  return {
    type: 'startWorkflow' as const,
    workflowType: WORKFLOW_TYPE,
    taskQueue,
    workflowId: STORAGE_GC_SCHEDULE_ID,
    args: [{ trigger: 'schedule' as const }],
    workflowExecutionTimeout: '2 hours',
    staticSummary: `Storage GC (every ${intervalSeconds}s): reconcile snapshots whose workflow is gone, clean Error snapshots, remove orphan backup files`,
  };
}

const NOTE = (s: number) => `storage GC every ${s}s (storage.cleanup.interval); trigger it to run now`;

/**
 * Creates the `storage-gc` Schedule, or brings an existing one to `intervalSeconds` and `taskQueue`.
 * Idempotent and safe when several workers start at once; an interval already in place keeps its phase (a
 * worker restart does not postpone the next run), and a pause set by an operator is kept.
 */
export async function ensureStorageGcSchedule(client: Client, opts: StorageGcScheduleOptions): Promise<ScheduleChange> {
  const now = opts.now ?? Date.now;
  const everyMs = opts.intervalSeconds * 1000;
  const log = opts.logger?.child({ scheduleId: STORAGE_GC_SCHEDULE_ID });
  try {
    await client.schedule.create({
      scheduleId: STORAGE_GC_SCHEDULE_ID,
      spec: intervalSpec(opts.intervalSeconds, now()),
      action: startAction(opts.taskQueue, opts.intervalSeconds),
      policies: { overlap: ScheduleOverlapPolicy.SKIP, catchupWindow: '1 minute' },
      state: { note: NOTE(opts.intervalSeconds) },
    });
    log?.info({ intervalSeconds: opts.intervalSeconds }, 'storage GC schedule created');
    return 'created';
  } catch (err) {
    if (!(err instanceof ScheduleAlreadyRunning)) throw err;
  }
  const handle = client.schedule.getHandle(STORAGE_GC_SCHEDULE_ID);
  const current = await handle.describe();
  const intervals = current.spec.intervals ?? [];
  const action = current.action;
  const same =
    intervals.length === 1 &&
    intervals[0]!.every === everyMs &&
    (current.spec.calendars ?? []).length === 0 &&
    action.type === 'startWorkflow' &&
    action.workflowType === WORKFLOW_TYPE &&
    action.taskQueue === opts.taskQueue;
  if (same) return 'unchanged';
  await handle.update((prev) => ({
    ...prev,
    spec: intervalSpec(opts.intervalSeconds, now()),
    action: startAction(opts.taskQueue, opts.intervalSeconds),
    state: { ...prev.state, note: NOTE(opts.intervalSeconds) },
  }));
  log?.info({ intervalSeconds: opts.intervalSeconds }, 'storage GC schedule updated');
  return 'updated';
}

/** Starts a scheduled run now (what "Trigger" in the Web UI does); does not wait for it. */
export async function triggerStorageGcSchedule(client: Client): Promise<void> {
  await client.schedule.getHandle(STORAGE_GC_SCHEDULE_ID).trigger(ScheduleOverlapPolicy.ALLOW_ALL);
}

/** The task queue the schedule starts GC on, when there is a schedule. */
async function scheduledTaskQueue(client: Client): Promise<string | undefined> {
  try {
    const desc = await client.schedule.getHandle(STORAGE_GC_SCHEDULE_ID).describe();
    return desc.action.type === 'startWorkflow' ? desc.action.taskQueue : undefined;
  } catch (err) {
    if (err instanceof ScheduleNotFoundError) return undefined;
    throw err;
  }
}

/**
 * Runs storage GC now and answers what it cleaned: executes a `storageGcWorkflow` under a unique id
 * (`storage-gc-manual-<uuid>`) and waits for its result. What `POST /api/v1/storage/gc` calls.
 */
export async function runStorageGcNow(client: Client, opts: { taskQueue?: string } = {}): Promise<StorageGcResult> {
  const taskQueue = opts.taskQueue ?? (await scheduledTaskQueue(client)) ?? DEFAULT_TASK_QUEUE;
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
