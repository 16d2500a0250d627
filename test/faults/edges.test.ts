import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MockActivityEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSnapshotActivities } from '../../activities/snapshot-activities.js';
import { embeddedDatabaseUrl } from '../../db/embedded.js';
import { updateSetting } from '../../db/settings.js';
import { getSnapshot, getStoreRefs, type SnapshotRecord } from '../../db/snapshots.js';
import { ServiceUnavailableError } from '../../domain/errors.js';
import { silentLogger } from '../../observability/logger.js';
import { createSnapshotService } from '../../services/snapshots.js';
import type { StorageDriver } from '../../storage/driver.js';
import { eventually, insertAccount, insertVolume, sha256File, writePattern } from '../support/fixtures.js';
import { startTestStack, type TestStack } from '../../harness/stack.js';

const MiB = 1024 * 1024;

/**
 * The edges of durability that the happy crash path does not reach: an operator's reset, an activity delivered
 * twice, a worker that stops mid-copy on the last attempt. Each case failed before the workflow counted attempts
 * itself and the activities answered for every state they may meet.
 */
describe('durability at the edges (real stack)', () => {
  let stack: TestStack;
  let driver: StorageDriver;
  let accountId: string;
  let imageStorePath: string;

  beforeAll(async () => {
    // 16 MiB/s: a 64 MiB copy takes seconds, long enough to stop a worker in the middle of it.
    // A 1 s drain: a stopping worker hands its running copy back instead of letting it finish.
    stack = await startTestStack({ env: { BACKUP_RATE_LIMIT_BYTES_PER_SEC: String(16 * MiB), WORKER_SHUTDOWN_GRACE_SECONDS: '1' } });
    driver = stack.drivers.KVM!;
    accountId = await insertAccount(stack.pool);
    imageStorePath = (await stack.pool.query('SELECT path FROM image_stores')).rows[0].path;
    await updateSetting(stack.pool, 'backup.retry.interval', 2);
  });
  afterAll(async () => {
    await stack?.stop();
  });

  const waitForState = (id: string, states: string[], timeoutMs = 120_000) =>
    eventually(async () => {
      const s = await getSnapshot(stack.pool, id);
      return s && states.includes(s.status) ? s : undefined;
    }, timeoutMs, `snapshot ${id} in ${states.join('|')}`);

  /** What must hold for a BackedUp snapshot whatever happened to it: docs/design.md §12. */
  async function expectIntactBackup(s: SnapshotRecord, volumePath: string) {
    const fresh = (await getSnapshot(stack.pool, s.id))!;
    expect(fresh.status).toBe('BackedUp');
    const refs = await getStoreRefs(stack.pool, s.id);
    const image = refs.find((r) => r.role === 'Image')!;
    expect(image.state).toBe('Ready');
    expect(await sha256File(`${imageStorePath}/${image.installPath}`)).toBe(image.checksum);
    expect(refs.find((r) => r.role === 'Primary')!.state).toBe('Ready');
    expect(await driver.hasSnapshot(volumePath, s.id)).toBe(true);
  }

  async function resetToFirstWorkflowTask(workflowId: string): Promise<string> {
    const handle = stack.client.workflow.getHandle(workflowId);
    const events = (await handle.fetchHistory()).events ?? [];
    const firstTask = events.find((e) => e.workflowTaskCompletedEventAttributes);
    const { runId } = await stack.client.workflowService.resetWorkflowExecution({
      namespace: stack.env.TEMPORAL_NAMESPACE,
      workflowExecution: { workflowId },
      workflowTaskFinishEventId: firstTask!.eventId,
      reason: 'operator reset (test)',
      requestId: crypto.randomUUID(),
    });
    return runId!;
  }

  it('a workflow reset to its first task after BackedUp leaves the snapshot backed up and its primary copy in place', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 32 * MiB });
    await writePattern(vol.path, 0x5a, 0, 8 * MiB);
    const { snapshot } = await stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: false });
    expect(snapshot.status).toBe('BackedUp');

    const runId = await resetToFirstWorkflowTask(snapshot.workflowId);
    const reset = stack.client.workflow.getHandle(snapshot.workflowId, runId);
    // The reset run re-executes every step against the finished snapshot: each must find it done.
    const result = await reset.result();
    expect(result.state).toBe('BackedUp');
    expect((await reset.describe()).status.name).toBe('COMPLETED');
    await expectIntactBackup(snapshot, vol.path);
  });

  it('a workflow reset after Error keeps the snapshot in Error without a new copy', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 16 * MiB });
    await updateSetting(stack.pool, 'backup.max.attempts', 1);
    // The image store lives under a regular file for this snapshot: every copy fails.
    const blocker = join(stack.dataDir, 'not-a-directory');
    writeFileSync(blocker, 'no image store here\n');
    await stack.pool.query('UPDATE image_stores SET path = $1', [join(blocker, 'store')]);
    try {
      const { snapshot } = await stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: true });
      const failed = await waitForState(snapshot.id, ['Error', 'BackedUp']);
      expect(failed.status).toBe('Error');

      await stack.pool.query('UPDATE image_stores SET path = $1', [imageStorePath]);

      // Reset with the store usable again: the reset run must not copy, nor revive the failed snapshot.
      const runId = await resetToFirstWorkflowTask(snapshot.workflowId);
      await stack.client.workflow.getHandle(snapshot.workflowId, runId).result().catch(() => undefined);
      const after = (await getSnapshot(stack.pool, snapshot.id))!;
      expect(after.status).toBe('Error');
      expect(after.backupAttempts).toBe(failed.backupAttempts);
      expect((await getStoreRefs(stack.pool, snapshot.id)).some((r) => r.role === 'Image' && r.state === 'Ready')).toBe(false);
    } finally {
      await stack.pool.query('UPDATE image_stores SET path = $1', [imageStorePath]);
      await updateSetting(stack.pool, 'backup.max.attempts', 3);
    }
  });

  it('every snapshot activity delivered again after BackedUp returns the same outcome and destroys nothing', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 16 * MiB });
    await writePattern(vol.path, 0x11, 0, 4 * MiB);
    const { snapshot } = await stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: false });
    expect(snapshot.status).toBe('BackedUp');
    const image = (await getStoreRefs(stack.pool, snapshot.id)).find((r) => r.role === 'Image')!;

    const acts = createSnapshotActivities({ pool: stack.pool, drivers: stack.drivers, logger: silentLogger });
    const env = new MockActivityEnvironment({ attempt: 1 });
    expect(await env.run(acts.createSnapshotOnPrimary, { snapshotId: snapshot.id })).toEqual({ sizeBytes: snapshot.size });
    // Both the workflow's attempt loop (attempt in the input) and executions from before it.
    for (const input of [{ snapshotId: snapshot.id, attempt: 1, maxAttempts: 3 }, { snapshotId: snapshot.id }]) {
      expect(await env.run(acts.backupSnapshotToSecondary, input)).toEqual({
        installPath: image.installPath,
        sizeBytes: image.sizeBytes,
        checksum: image.checksum,
        // The volume's first backup: a full one, not a delta (docs/design.md §14).
        parentSnapshotId: null,
      });
    }
    expect(await env.run(acts.deletePrimarySnapshot, { snapshotId: snapshot.id })).toMatchObject({ deleted: false });
    expect(await env.run(acts.markSnapshotError, { snapshotId: snapshot.id, reason: 'late compensation' })).toEqual({
      changed: false,
      state: 'BackedUp',
    });
    await expectIntactBackup(snapshot, vol.path);
  });

  it('16 concurrent snapshots of one volume through two worker processes are all created (one image lock across processes)', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 16 * MiB });
    // A second set of workers with its own storage driver: the in-process queue of the first cannot see it.
    const second = await startTestStack({
      roles: ['worker'],
      dataDir: stack.dataDir,
      env: { DATABASE_URL: embeddedDatabaseUrl(stack.env.EMBEDDED_PG_PORT), TEMPORAL_ADDRESS: stack.devServer!.address },
    });
    try {
      const results = await Promise.allSettled(
        Array.from({ length: 16 }, () => stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: true })),
      );
      const failures = results.flatMap((r) => (r.status === 'rejected' ? [String(r.reason?.message ?? r.reason)] : []));
      expect(failures).toEqual([]);
      const ids = results.map((r) => (r as PromiseFulfilledResult<{ snapshot: SnapshotRecord }>).value.snapshot.id);
      for (const id of ids) {
        // A copy that read the snapshot table while another creation rewrote it once took it for gone and
        // compensated: the primary snapshot of a "created" snapshot vanished.
        expect(await driver.hasSnapshot(vol.path, id), `${id}: ${(await getSnapshot(stack.pool, id))?.lastError}`).toBe(true);
      }
      for (const id of ids) expect((await waitForState(id, ['BackedUp', 'Error'])).status).toBe('BackedUp');
    } finally {
      await second.stop();
    }
  });

  it('a backup on its last attempt survives its worker stopping mid-copy: resumed by the next worker, no attempt spent', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 128 * MiB });
    await writePattern(vol.path, 0x77, 0, 96 * MiB);
    await updateSetting(stack.pool, 'backup.max.attempts', 1);
    await updateSetting(stack.pool, 'backup.retry.interval', 300);
    let second: TestStack | undefined;
    try {
      const { snapshot } = await stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: true });
      await eventually(async () => ((await getSnapshot(stack.pool, snapshot.id))!.backupBytesDone > 0 ? true : undefined), 60_000, 'copy under way');

      // The workers stop (a deploy): the running copy is handed back, not failed.
      await stack.workers!.shutdown();
      const interrupted = await eventually(async () => {
        const s = (await getSnapshot(stack.pool, snapshot.id))!;
        return s.lastError?.includes('interrupted') ? s : undefined;
      }, 30_000, 'the interruption shown on the snapshot');
      expect(interrupted.status).toBe('BackingUp');
      expect(interrupted.nextAttemptAt).toBeNull();

      // The next worker (another process in production) takes the copy over at once.
      second = await startTestStack({
        roles: ['worker'],
        dataDir: stack.dataDir,
        env: {
          DATABASE_URL: embeddedDatabaseUrl(stack.env.EMBEDDED_PG_PORT),
          TEMPORAL_ADDRESS: stack.devServer!.address,
          BACKUP_RATE_LIMIT_BYTES_PER_SEC: String(64 * MiB),
        },
      });
      const done = await waitForState(snapshot.id, ['BackedUp', 'Error'], 90_000);
      expect(done.status).toBe('BackedUp');
      expect(done.backupAttempts).toBe(1);
      expect(done.lastError).toBeNull();
      await expectIntactBackup(snapshot, vol.path);
    } finally {
      await second?.stop();
      await updateSetting(stack.pool, 'backup.max.attempts', 3);
      await updateSetting(stack.pool, 'backup.retry.interval', 2);
    }
  });

  it('with no worker to take it, a snapshot request answers 503 in bounded time and leaves no Allocated row behind', async () => {
    await stack.workers!.shutdown();
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 16 * MiB });
    const snapshots = createSnapshotService({
      pool: stack.pool,
      client: stack.client,
      taskQueue: stack.env.TEMPORAL_TASK_QUEUE,
      backupTaskQueue: stack.env.TEMPORAL_BACKUP_TASK_QUEUE,
      logger: silentLogger,
      createDeadlineMs: 3000,
    });
    const started = Date.now();
    const err = await snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: true }).then(() => null, (e) => e);
    expect(err).toBeInstanceOf(ServiceUnavailableError);
    expect((err as ServiceUnavailableError).code).toBe('TEMPORAL_UNAVAILABLE');
    expect(Date.now() - started).toBeLessThan(30_000);
    const id = (err as ServiceUnavailableError).details.snapshotId as string;
    const row = (await getSnapshot(stack.pool, id))!;
    // Not Allocated: the volume is not held by a snapshot nothing will ever take.
    expect(row.status).toBe('Error');
    expect(row.lastError).toMatch(/did not start in time/);
    expect((await stack.client.workflow.getHandle(row.workflowId).describe()).status.name).toBe('TERMINATED');
    expect(await driver.hasSnapshot(vol.path, id)).toBe(false);
  });
});

