import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { updateSetting } from '../../db/settings.js';
import { getSnapshot, getStoreRefs } from '../../db/snapshots.js';
import { silentLogger } from '../../observability/logger.js';
import { ensureStorageGcSchedule, runStorageGcNow, STORAGE_GC_SCHEDULE_ID } from '../../services/storage-gc.js';
import type { StorageDriver } from '../../storage/driver.js';
import { installTemporalRuntime } from '../../app/runtime.js';
import { eventually, insertAccount, insertVolume, sha256File, writePattern } from '../support/fixtures.js';
import { startTestStack, type TestStack } from '../../harness/stack.js';

const MiB = 1024 * 1024;

/** Storage GC and its reconciler on a real stack: Temporal dev server, embedded PostgreSQL, qcow2 images. */
describe('storage GC', () => {
  let stack: TestStack;
  let driver: StorageDriver;
  let accountId: string;
  let storePath: string;
  let blocker: string;

  beforeAll(async () => {
    installTemporalRuntime(silentLogger, false);
    stack = await startTestStack();
    driver = stack.drivers.KVM!;
    accountId = await insertAccount(stack.pool);
    storePath = (await stack.pool.query('SELECT path FROM image_stores')).rows[0].path;
    blocker = join(stack.dataDir, 'not-a-directory');
    writeFileSync(blocker, '');
  });
  afterAll(async () => {
    await stack?.stop();
  });

  const waitFor = (id: string, pred: (s: NonNullable<Awaited<ReturnType<typeof getSnapshot>>>) => boolean, what: string) =>
    eventually(async () => {
      const s = await getSnapshot(stack.pool, id);
      return s && pred(s) ? s : undefined;
    }, 90_000, `snapshot ${id}: ${what}`);

  /** Every backup fails at once: the store path lies under a regular file. */
  const breakStore = () => stack.pool.query('UPDATE image_stores SET path = $1', [join(blocker, 'x')]);
  const restoreStore = () => stack.pool.query('UPDATE image_stores SET path = $1', [storePath]);
  const backupPath = (volumeId: string, snapshotId: string) => join(storePath, 'snapshots', accountId, volumeId, `${snapshotId}.qcow2`);
  const partialOf = (final: string) => `${final}.partial-${randomBytes(8).toString('hex')}`;
  const put = (file: string, content = 'leftover bytes') => {
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, content);
  };
  const eventsOf = async (id: string) =>
    (await stack.pool.query(`SELECT type, level, description, details FROM events WHERE resource_id = $1 ORDER BY id`, [id])).rows;

  it('creates the storage-gc schedule at start-up from storage.cleanup.interval, idempotently', async () => {
    const handle = stack.client.schedule.getHandle(STORAGE_GC_SCHEDULE_ID);
    const desc = await handle.describe();
    expect(desc.spec.intervals?.map((i) => i.every)).toEqual([3600_000]);
    expect(desc.action.type === 'startWorkflow' && desc.action.workflowType).toBe('storageGcWorkflow');
    const opts = { taskQueue: stack.env.TEMPORAL_TASK_QUEUE, intervalSeconds: 3600 };
    expect(await ensureStorageGcSchedule(stack.client, opts)).toBe('unchanged');
    // A changed interval updates the schedule (what the configuration API calls).
    expect(await stack.storageGc.ensureSchedule(600)).toBe('updated');
    expect((await handle.describe()).spec.intervals?.map((i) => i.every)).toEqual([600_000]);
    expect(await ensureStorageGcSchedule(stack.client, opts)).toBe('updated');

    // Triggering the schedule (the Web UI's "Trigger") runs GC at once.
    await stack.storageGc.trigger();
    const action = await eventually(async () => (await handle.describe()).info.recentActions.at(-1)?.action, 30_000, 'a scheduled run');
    const run = stack.client.workflow.getHandle(action.workflow.workflowId, action.workflow.firstExecutionRunId);
    const result = await run.result();
    expect(result.trigger).toBe('schedule');
    expect(result.failures).toEqual([]);
  });

  it('destroys an Error snapshot with its partial files, store refs and leftover primary snapshot; leaves healthy backups alone', async () => {
    // A healthy snapshot, backed up.
    const healthyVol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 8 * MiB });
    await writePattern(healthyVol.path, 0x11, 0, MiB);
    const healthy = (await stack.snapshots.requestSnapshot({ accountId, volumeId: healthyVol.volumeId, asyncBackup: false })).snapshot;
    expect(healthy.status).toBe('BackedUp');
    const healthyFile = backupPath(healthyVol.volumeId, healthy.id);
    const healthySum = await sha256File(healthyFile);
    const healthyRefs = await getStoreRefs(stack.pool, healthy.id);
    // A temporary file left beside a healthy backup by some earlier failed attempt is garbage.
    const strayPartial = partialOf(healthyFile);
    put(strayPartial);

    // A snapshot whose only backup attempt fails: Error, primary snapshot compensated.
    const failedVol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 8 * MiB });
    await updateSetting(stack.pool, 'backup.max.attempts', 1);
    await breakStore();
    let failedId: string;
    try {
      failedId = (await stack.snapshots.requestSnapshot({ accountId, volumeId: failedVol.volumeId, asyncBackup: true })).snapshot.id;
      await waitFor(failedId, (s) => s.status === 'Error', 'Error');
    } finally {
      await restoreStore();
      await updateSetting(stack.pool, 'backup.max.attempts', 3);
    }
    expect((await getStoreRefs(stack.pool, failedId)).length).toBeGreaterThan(0);
    // What a crash mid-backup would leave: a partial file, a final file, and the primary snapshot.
    const failedFinal = backupPath(failedVol.volumeId, failedId);
    const failedPartial = partialOf(failedFinal);
    put(failedPartial);
    put(failedFinal);
    await driver.createSnapshot(failedVol.path, failedId);

    // Orphans: a backup of a snapshot id no row knows; an unknown file name GC must not touch.
    const orphan = join(storePath, 'snapshots', randomUUID(), randomUUID(), `${randomUUID()}.qcow2`);
    const orphanPartial = partialOf(orphan);
    put(orphan);
    put(orphanPartial);
    const notes = join(dirname(healthyFile), 'README.txt');
    put(notes, 'operator notes');

    const result = await runStorageGcNow(stack.client);
    expect(result.trigger).toBe('manual');
    expect(result.failures).toEqual([]);

    const destroyed = result.destroyed.find((d) => d.snapshotId === failedId);
    expect(destroyed).toBeDefined();
    expect(destroyed!.removedFiles.sort()).toEqual([failedFinal, failedPartial].sort());
    expect(destroyed!.primarySnapshotDeleted).toBe(true);
    expect(destroyed!.storeRefsDeleted).toBeGreaterThan(0);
    const gone = await getSnapshot(stack.pool, failedId);
    expect(gone?.status).toBe('Destroyed');
    expect(gone?.removedAt).not.toBeNull();
    expect(await getStoreRefs(stack.pool, failedId)).toEqual([]);
    expect(existsSync(failedPartial) || existsSync(failedFinal)).toBe(false);
    expect(await driver.hasSnapshot(failedVol.path, failedId)).toBe(false);
    const events = await eventsOf(failedId);
    const del = events.find((e) => e.type === 'SNAPSHOT.DELETE' && e.details.to === 'Destroyed');
    expect(del?.details.from).toBe('Error');

    expect(result.orphanFiles.map((o) => o.path).sort()).toEqual([orphan, orphanPartial, strayPartial].sort());
    expect(existsSync(orphan) || existsSync(orphanPartial) || existsSync(strayPartial)).toBe(false);
    expect(existsSync(notes)).toBe(true);

    // The healthy snapshot is untouched: file, bytes, refs, state.
    expect(await sha256File(healthyFile)).toBe(healthySum);
    expect(await getStoreRefs(stack.pool, healthy.id)).toEqual(healthyRefs);
    expect((await getSnapshot(stack.pool, healthy.id))?.status).toBe('BackedUp');
    expect(await driver.hasSnapshot(healthyVol.path, healthy.id)).toBe(true);

    // Running it again is harmless.
    const again = await runStorageGcNow(stack.client);
    expect(again.destroyed).toEqual([]);
    expect(again.orphanFiles).toEqual([]);
    expect(again.reconciled).toEqual([]);
    expect(again.failures).toEqual([]);
    expect(await sha256File(healthyFile)).toBe(healthySum);
    expect(readdirSync(dirname(healthyFile)).sort()).toEqual([`${healthy.id}.qcow2`, 'README.txt'].sort());
    expect((await getSnapshot(stack.pool, failedId))?.status).toBe('Destroyed');
  });

  it('reconciler: a snapshot whose workflow was terminated while BackingUp goes Error → Destroyed; a running backup is left alone', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 8 * MiB });
    // Hold the snapshot in BackingUp: the first attempt fails at once, the next one is an hour away.
    await updateSetting(stack.pool, 'backup.retry.interval', 3600);
    await breakStore();
    let id: string;
    try {
      id = (await stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: true })).snapshot.id;
      await waitFor(id, (s) => s.status === 'BackingUp' && s.backupAttempts === 1 && s.lastError !== null, 'first attempt failed');
    } finally {
      await restoreStore();
      await updateSetting(stack.pool, 'backup.retry.interval', 300);
    }
    const snap = (await getSnapshot(stack.pool, id))!;
    // A backup in flight owns its temporary file: GC must leave it, and the snapshot, alone.
    const temp = partialOf(backupPath(vol.volumeId, id));
    put(temp);
    const during = await runStorageGcNow(stack.client);
    expect(during.reconciled.map((r) => r.snapshotId)).not.toContain(id);
    expect(during.orphanFiles.map((o) => o.path)).not.toContain(temp);
    expect(existsSync(temp)).toBe(true);
    expect((await getSnapshot(stack.pool, id))?.status).toBe('BackingUp');
    expect(await driver.hasSnapshot(vol.path, id)).toBe(true);

    // An operator terminates the workflow: nothing will ever finish or compensate this snapshot.
    await stack.client.workflow.getHandle(snap.workflowId).terminate('operator terminated it');
    const result = await runStorageGcNow(stack.client);
    expect(result.reconciled).toEqual([
      expect.objectContaining({ snapshotId: id, previousState: 'BackingUp', workflowStatus: 'TERMINATED' }),
    ]);
    expect(result.destroyed.map((d) => d.snapshotId)).toContain(id);
    const after = (await getSnapshot(stack.pool, id))!;
    expect(after.status).toBe('Destroyed');
    expect(after.lastError).toContain(`workflow ${snap.workflowId} is TERMINATED`);
    expect(await driver.hasSnapshot(vol.path, id)).toBe(false);
    expect(existsSync(temp)).toBe(false);
    expect(await getStoreRefs(stack.pool, id)).toEqual([]);
    const events = await eventsOf(id);
    const toError = events.find((e) => e.details.to === 'Error');
    expect(toError).toMatchObject({ level: 'ERROR', details: { from: 'BackingUp', reconciler: true, workflowStatus: 'TERMINATED' } });
    expect(toError.description).toContain(`workflow ${snap.workflowId} is TERMINATED`);
    expect(events.at(-1)).toMatchObject({ type: 'SNAPSHOT.DELETE', details: { from: 'Error', to: 'Destroyed' } });
  });

  it('reconciler: an Allocated snapshot whose workflow never started waits out the grace period, then is cleaned', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 8 * MiB });
    const id = randomUUID();
    await stack.pool.query(
      `INSERT INTO snapshots (id, account_id, volume_id, volume_type, name, status, async_backup, workflow_id,
                              backup_max_attempts, backup_retry_interval)
       VALUES ($1, $2, $3, 'ROOT', 'never-started', 'Allocated', true, $4, 3, 300)`,
      [id, accountId, vol.volumeId, `snapshot-${id}`],
    );
    const young = await runStorageGcNow(stack.client);
    expect(young.deferred).toContain(id);
    expect((await getSnapshot(stack.pool, id))?.status).toBe('Allocated');

    await stack.pool.query(`UPDATE snapshots SET created = now() - interval '2 minutes' WHERE id = $1`, [id]);
    const old = await runStorageGcNow(stack.client);
    expect(old.reconciled).toEqual([expect.objectContaining({ snapshotId: id, workflowStatus: 'NOT_FOUND', previousState: 'Allocated' })]);
    expect(old.destroyed.map((d) => d.snapshotId)).toContain(id);
    const s = (await getSnapshot(stack.pool, id))!;
    expect(s.status).toBe('Destroyed');
    expect(s.lastError).toMatch(/does not exist/);
  });
});
