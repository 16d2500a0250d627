/**
 * A Temporal Schedule that starts one workflow every N seconds (storage GC, the backup scrub): created once,
 * brought to a new interval or task queue in place, safe when several workers ensure it at once.
 */
import { ScheduleAlreadyRunning, ScheduleNotFoundError, ScheduleOverlapPolicy, type Client } from '@temporalio/client';
import type { Logger } from 'pino';

export type ScheduleChange = 'created' | 'updated' | 'unchanged';

export interface IntervalSchedule {
  scheduleId: string;
  workflowType: string;
  taskQueue: string;
  intervalSeconds: number;
  args: unknown[];
  /** The runs' summary in the Web UI. */
  summary: string;
  /** The schedule's note in the Web UI (why it exists, how it is timed). */
  note: string;
  workflowExecutionTimeout: string;
  logger?: Logger | undefined;
  /** For tests: the clock. */
  now?: () => number;
}

/**
 * Every `intervalSeconds`, phased so the first run comes one full interval after now (an epoch-aligned hourly
 * run would otherwise fire at the next full hour, minutes after a fresh start).
 */
function intervalSpec(intervalSeconds: number, nowMs: number) {
  const nowSec = Math.floor(nowMs / 1000);
  // 30 s of margin: the match just before "now" must lie before the schedule exists, or it would fire at once.
  const offset = (((nowSec - 30) % intervalSeconds) + intervalSeconds) % intervalSeconds;
  return { intervals: [{ every: `${intervalSeconds}s`, offset: `${offset}s` }] };
}

function startAction(s: IntervalSchedule) {
  return {
    type: 'startWorkflow' as const,
    workflowType: s.workflowType,
    taskQueue: s.taskQueue,
    workflowId: s.scheduleId,
    args: s.args,
    workflowExecutionTimeout: s.workflowExecutionTimeout,
    staticSummary: s.summary,
  };
}

/**
 * Creates the schedule, or brings an existing one to the interval and task queue. An interval already in place
 * keeps its phase (a worker restart does not postpone the next run), and a pause set by an operator is kept.
 */
export async function ensureIntervalSchedule(client: Client, s: IntervalSchedule): Promise<ScheduleChange> {
  const now = s.now ?? Date.now;
  const log = s.logger?.child({ scheduleId: s.scheduleId });
  try {
    await client.schedule.create({
      scheduleId: s.scheduleId,
      spec: intervalSpec(s.intervalSeconds, now()),
      action: startAction(s),
      policies: { overlap: ScheduleOverlapPolicy.SKIP, catchupWindow: '1 minute' },
      state: { note: s.note },
    });
    log?.info({ intervalSeconds: s.intervalSeconds }, 'schedule created');
    return 'created';
  } catch (err) {
    if (!(err instanceof ScheduleAlreadyRunning)) throw err;
  }
  const handle = client.schedule.getHandle(s.scheduleId);
  const current = await handle.describe();
  const intervals = current.spec.intervals ?? [];
  const action = current.action;
  const same =
    intervals.length === 1 &&
    intervals[0]!.every === s.intervalSeconds * 1000 &&
    (current.spec.calendars ?? []).length === 0 &&
    action.type === 'startWorkflow' &&
    action.workflowType === s.workflowType &&
    action.taskQueue === s.taskQueue;
  if (same) return 'unchanged';
  await handle.update((prev) => ({
    ...prev,
    spec: intervalSpec(s.intervalSeconds, now()),
    action: startAction(s),
    state: { ...prev.state, note: s.note },
  }));
  log?.info({ intervalSeconds: s.intervalSeconds }, 'schedule updated');
  return 'updated';
}

/** Pauses the schedule with a note (a setting turned it off); no schedule: nothing to do. */
export async function pauseSchedule(client: Client, scheduleId: string, note: string): Promise<void> {
  try {
    const handle = client.schedule.getHandle(scheduleId);
    if (!(await handle.describe()).state.paused) await handle.pause(note);
  } catch (err) {
    if (!(err instanceof ScheduleNotFoundError)) throw err;
  }
}

/** The task queue a schedule starts its workflow on, when there is such a schedule. */
export async function scheduledTaskQueue(client: Client, scheduleId: string): Promise<string | undefined> {
  try {
    const desc = await client.schedule.getHandle(scheduleId).describe();
    return desc.action.type === 'startWorkflow' ? desc.action.taskQueue : undefined;
  } catch (err) {
    if (err instanceof ScheduleNotFoundError) return undefined;
    throw err;
  }
}
