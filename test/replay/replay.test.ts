import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { bundleWorkflowCode, DefaultLogger, Worker } from '@temporalio/worker';
import { DeterminismViolationError } from '@temporalio/workflow';
import { describe, expect, it } from 'vitest';
import { workflowBundle } from '../../app/workers.js';

const DIR = join(import.meta.dirname, 'histories');

/** Every recorded history (see test/replay/record-histories.ts), as the replayer takes them. */
function recordedHistories() {
  return readdirSync(DIR)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => ({ workflowId: f.replace(/\.json$/, ''), history: JSON.parse(readFileSync(join(DIR, f), 'utf8')) }));
}

describe('replay of recorded snapshot-workflow histories', () => {
  const histories = recordedHistories();

  it('has the recorded scenarios', () => {
    // Older recordings (kept after a patched change) may sit beside these.
    expect(histories.map((h) => h.workflowId)).toEqual(expect.arrayContaining([
      'all-attempts-failed',
      'async-success',
      'primary-failure',
      'query-during-backup',
      'retry-then-success',
      'sync-success',
    ]));
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
