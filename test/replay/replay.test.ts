import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { bundleWorkflowCode, DefaultLogger, Worker } from '@temporalio/worker';
import { DeterminismViolationError } from '@temporalio/workflow';
import { describe, expect, it } from 'vitest';
import { workflowBundle } from '../../app/workers.js';

const DIR = join(import.meta.dirname, 'histories');

/** The parts of a recorded history event (JSON, as `temporal workflow show --output json` writes it) read here. */
interface HistoryEvent {
  eventType?: string;
  activityTaskScheduledEventAttributes?: { activityType?: { name?: string }; taskQueue?: { name?: string } };
  timerStartedEventAttributes?: unknown;
  markerRecordedEventAttributes?: { markerName?: string; details?: Record<string, { payloads?: Array<{ data?: string }> }> };
}

/** Every recorded history (see test/replay/record-histories.ts), as the replayer takes them. */
function recordedHistories() {
  return readdirSync(DIR)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => ({ workflowId: f.replace(/\.json$/, ''), history: JSON.parse(readFileSync(join(DIR, f), 'utf8')) }));
}

describe('replay of recorded snapshot-workflow histories', () => {
  const histories = recordedHistories();

  it('has the recorded scenarios, each showing what its name says', () => {
    const current = (id: string) => {
      const h = histories.find((x) => x.workflowId === id);
      expect(h, `history ${id}`).toBeDefined();
      const events = h!.history.events as HistoryEvent[];
      const scheduled = (name: string) => events.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === name).length;
      return { close: events.at(-1)?.eventType, backups: scheduled('backupSnapshotToSecondary'), compensations: scheduled('deletePrimarySnapshot'), events };
    };
    const completed = 'EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED';
    const failed = 'EVENT_TYPE_WORKFLOW_EXECUTION_FAILED';
    for (const id of ['sync-success', 'async-success', 'query-during-backup']) {
      expect(current(id), id).toMatchObject({ close: completed, compensations: 0 });
      expect(current(id).backups, id).toBeGreaterThanOrEqual(1);
    }
    const retried = current('retry-then-success');
    expect(retried).toMatchObject({ close: completed, compensations: 0 });
    expect(retried.backups).toBeGreaterThanOrEqual(2);
    expect(retried.events.some((e) => e.timerStartedEventAttributes), 'a wait between attempts').toBe(true);
    expect(current('all-attempts-failed')).toMatchObject({ close: failed, compensations: 1 });
    expect(current('primary-failure')).toMatchObject({ close: failed, backups: 0, compensations: 0 });
    /** The task queues an activity was scheduled on, in a history. */
    const queuesOf = (events: HistoryEvent[], activity: string) =>
      events
        .filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === activity)
        .map((e) => e.activityTaskScheduledEventAttributes?.taskQueue?.name);
    // A running VM's disk: its primary snapshot was scheduled on its host's queue, then backed up.
    const live = current('live-vm-on-host-queue');
    expect(live).toMatchObject({ close: completed, compensations: 0 });
    expect(queuesOf(live.events, 'createSnapshotOnPrimary')).toEqual([expect.stringMatching(/-host-kvm-host-1$/)]);
    // Its backup failed: the compensation ran on the host's queue too.
    const compensated = current('live-vm-compensated');
    expect(compensated).toMatchObject({ close: failed, compensations: 1 });
    expect(queuesOf(compensated.events, 'deletePrimarySnapshot')).toEqual([expect.stringMatching(/-host-kvm-host-1$/)]);
  });

  it('the current recordings take every patch the workflow code has (each new path is replayed)', () => {
    const source = readFileSync(join(import.meta.dirname, '../../workflows/snapshot-workflow.ts'), 'utf8');
    const names = [...source.matchAll(/patched\((\w+)\)/g)].map((m) => m[1]!);
    const ids = names.map((n) => new RegExp(`const ${n} = '([^']+)'`).exec(source)?.[1]);
    expect(ids.length).toBeGreaterThan(0);
    expect(ids.every(Boolean), `patch ids of ${names.join(', ')}`).toBe(true);
    const recorded = new Set(
      histories
        .filter((h) => !/-v\d+$/.test(h.workflowId))
        .flatMap((h) => h.history.events as HistoryEvent[])
        .filter((e) => e.markerRecordedEventAttributes?.markerName === 'core_patch')
        .map((e) => (JSON.parse(Buffer.from(e.markerRecordedEventAttributes!.details!['patch-data']!.payloads![0]!.data!, 'base64').toString()) as { id: string }).id),
    );
    for (const id of ids) expect(recorded, `patch ${id}`).toContain(id);
  });

  it('replays every history against the current workflow code without non-determinism', async () => {
    const failures: string[] = [];
    for await (const result of Worker.runReplayHistories({ workflowBundle: await workflowBundle(), replayName: 'current' }, histories)) {
      if (result.error) failures.push(`${result.workflowId}: ${result.error.message}`);
    }
    expect(failures).toEqual([]);
  });

  it('catches a deliberately non-deterministic change', async () => {
    const bundle = await bundleWorkflowCode({
      workflowsPath: join(import.meta.dirname, 'fixtures', 'nondeterministic-workflow.ts'),
      logger: new DefaultLogger('WARN'),
    });
    const results = [];
    for await (const r of Worker.runReplayHistories({ workflowBundle: bundle, replayName: 'broken' }, histories)) results.push(r);
    expect(results).toHaveLength(histories.length);
    for (const r of results) expect(r.error, r.workflowId).toBeInstanceOf(DeterminismViolationError);
  });
});
