/** Timing spans of one workflow execution read from its Temporal history (server timestamps). */
import proto from '@temporalio/proto';
import type { Client } from '@temporalio/client';
import { median, round } from './stats.js';

const EventType = proto.temporal.api.enums.v1.EventType;
type HistoryEvent = proto.temporal.api.history.v1.IHistoryEvent;

function ms(ts: HistoryEvent['eventTime']): number {
  if (!ts) return Number.NaN;
  return Number(String(ts.seconds ?? 0)) * 1000 + (ts.nanos ?? 0) / 1e6;
}

/** Where the time between WorkflowExecutionStarted and each milestone goes (ms). */
export function spansOf(events: HistoryEvent[]): Record<string, number> {
  const t0 = ms(events[0]!.eventTime);
  const out: Record<string, number> = {};
  const scheduled = new Map<string, { name: string; t: number }>();
  const started = new Map<string, number>();
  let wftScheduled = t0;
  let wftStarted = 0;
  let wftCount = 0;
  let lastActivityCompleted: number | null = null;
  for (const e of events) {
    const t = ms(e.eventTime);
    const id = String(e.eventId);
    switch (e.eventType) {
      case EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
        wftScheduled = t;
        break;
      case EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
        wftStarted = t;
        out[`workflow task ${wftCount + 1}: scheduled → started`] = t - wftScheduled;
        if (lastActivityCompleted !== null) {
          out[`workflow task ${wftCount + 1}: previous activity completed → started`] = t - lastActivityCompleted;
          lastActivityCompleted = null;
        }
        break;
      case EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
        wftCount++;
        out[`workflow task ${wftCount}: started → completed`] = t - wftStarted;
        break;
      case EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
        scheduled.set(id, { name: e.activityTaskScheduledEventAttributes?.activityType?.name ?? '?', t });
        break;
      case EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED: {
        const s = scheduled.get(String(e.activityTaskStartedEventAttributes?.scheduledEventId));
        if (s) {
          started.set(s.name, t);
          out[`${s.name}: scheduled → started`] = t - s.t;
        }
        break;
      }
      case EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
      case EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: {
        const attrs = e.activityTaskCompletedEventAttributes ?? e.activityTaskFailedEventAttributes;
        const s = scheduled.get(String(attrs?.scheduledEventId));
        if (s) out[`${s.name}: started → ${e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED ? 'failed' : 'completed'}`] = t - (started.get(s.name) ?? t);
        lastActivityCompleted = t;
        break;
      }
      case EventType.EVENT_TYPE_MARKER_RECORDED:
        out['local activity marker recorded (since start)'] = t - t0;
        break;
      case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
        out['update accepted (since start)'] = t - t0;
        break;
      case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED:
        out['update completed = "created" (since start)'] = t - t0;
        break;
      case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
        out['workflow completed (since start)'] = t - t0;
        break;
    }
  }
  out['workflow tasks (count)'] = wftCount;
  out['history events (count)'] = events.length;
  return out;
}

/** Median of each span over several workflows. */
export function medianSpans(all: Array<Record<string, number>>): Record<string, number> {
  const keys = [...new Set(all.flatMap((s) => Object.keys(s)))];
  return Object.fromEntries(keys.map((k) => [k, round(median(all.map((s) => s[k]).filter((x): x is number => x !== undefined && Number.isFinite(x))), 1)]));
}

export async function historySpans(client: Client, workflowId: string): Promise<Record<string, number>> {
  const h = await client.workflow.getHandle(workflowId).fetchHistory();
  return spansOf(h.events ?? []);
}

/** Whether a snapshot workflow created on primary in a local activity (a marker) rather than an activity task. */
export async function primaryAsLocalActivity(client: Client, workflowId: string): Promise<boolean> {
  const h = await client.workflow.getHandle(workflowId).fetchHistory();
  const events = h.events ?? [];
  const scheduled = events.some(
    (e) => e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED && e.activityTaskScheduledEventAttributes?.activityType?.name === 'createSnapshotOnPrimary',
  );
  return !scheduled && events.some((e) => e.eventType === EventType.EVENT_TYPE_MARKER_RECORDED);
}

/** Failures and timeouts in a history (retries the success path should not have), by event type. */
export async function historyProblems(client: Client, workflowId: string): Promise<Record<string, number>> {
  const h = await client.workflow.getHandle(workflowId).fetchHistory();
  const out: Record<string, number> = {};
  for (const e of h.events ?? []) {
    const name = EventType[e.eventType ?? 0] as string | undefined;
    if (!name || !/TIMED_OUT|FAILED/.test(name)) continue;
    let key = name.replace('EVENT_TYPE_', '');
    const t = e.activityTaskTimedOutEventAttributes?.failure?.timeoutFailureInfo?.timeoutType ?? e.workflowTaskTimedOutEventAttributes?.timeoutType;
    if (t != null) key += ` (${String(proto.temporal.api.enums.v1.TimeoutType[t]).replace('TIMEOUT_TYPE_', '')})`;
    out[key] = (out[key] ?? 0) + 1;
  }
  return out;
}
