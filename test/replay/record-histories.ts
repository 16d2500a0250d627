/**
 * Records real snapshot-workflow histories for the replay tests: runs each scenario on a real stack (Temporal
 * dev server, embedded PostgreSQL, qcow2 images) and writes the history as JSON to test/replay/histories/.
 * Run with `npm run record-histories` after a deliberate, patched() change to the workflow (see docs/how-it-works.md, "Changing a workflow safely").
 */
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { execFileSync } from 'node:child_process';
import { temporalCli } from '../../temporal/binaries.js';
import { updateSetting } from '../../db/settings.js';
import { getSnapshot } from '../../db/snapshots.js';
import { mayRunQuery, statusQuery } from '../../workflows/definitions.js';
import { eventually, insertAccount, insertVolume, writePattern } from '../support/fixtures.js';
import { startTestStack, type TestStack } from '../../harness/stack.js';
import { NativeConnection, Worker } from '@temporalio/worker';
import { createSnapshotActivities } from '../../activities/snapshot-activities.js';
import { hostTaskQueue } from '../../compute/host-queue.js';
import { createSnapshotService } from '../../services/snapshots.js';
import { silentLogger } from '../../observability/logger.js';

const OUT = join(import.meta.dirname, 'histories');
const MiB = 1024 * 1024;

async function waitFor(stack: TestStack, id: string, states: string[]) {
  return eventually(async () => {
    const s = await getSnapshot(stack.pool, id);
    return s && states.includes(s.status) ? s : undefined;
  }, 120_000, `${id} in ${states}`);
}

async function waitForFailedAttempt(stack: TestStack, id: string) {
  await eventually(async () => {
    const { rows } = await stack.pool.query(`SELECT 1 FROM events WHERE resource_id = $1 AND description LIKE 'backup attempt%failed%'`, [id]);
    return rows.length ? true : undefined;
  }, 60_000, 'a failed attempt');
}

/** Saves the history in the CLI's JSON form (`temporal workflow show --output json`), which replay reads. */
async function save(stack: TestStack, name: string, workflowId: string) {
  const cli = temporalCli();
  if (cli.type !== 'existing-path') throw new Error('the Temporal CLI is needed to record histories');
  const json = execFileSync(cli.path, ['workflow', 'show', '--workflow-id', workflowId, '--output', 'json', '--address', stack.devServer!.address], {
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  const events = (JSON.parse(json) as { events: unknown[] }).events.length;
  // Stack traces name this checkout's path: keep machine paths out of the repository.
  const repoRoot = resolve(import.meta.dirname, '..', '..');
  writeFileSync(join(OUT, `${name}.json`), json.replaceAll(repoRoot, '<repo>').trimEnd() + '\n');
  console.log(`recorded ${name} (${events} events)`);
}

/** `RECORD_ONLY=a,b` records only those scenarios (a new one, say), leaving the other recordings as they are. */
const only = process.env.RECORD_ONLY?.split(',');
const want = (name: string) => !only || only.includes(name);

const stack = await startTestStack();
try {
  const accountId = await insertAccount(stack.pool);
  const driver = stack.drivers.KVM!;
  const storePath: string = (await stack.pool.query('SELECT path FROM image_stores')).rows[0].path;
  const breakStore = () => stack.pool.query('UPDATE image_stores SET path = $1', ['/dev/null/not-a-store']);
  const fixStore = () => stack.pool.query('UPDATE image_stores SET path = $1', [storePath]);
  const volume = async (type: 'ROOT' | 'DATADISK' = 'ROOT') => {
    const v = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 8 * MiB, withVm: true, type });
    await writePattern(v.path, 0xab, 0, MiB);
    return v;
  };

  if (want('async-success')) {
    const v = await volume();
    const { snapshot } = await stack.snapshots.requestSnapshot({ accountId, volumeId: v.volumeId, asyncBackup: true });
    await waitFor(stack, snapshot.id, ['BackedUp']);
    await save(stack, 'async-success', snapshot.workflowId);
  }
  if (want('sync-success')) {
    const v = await volume('DATADISK');
    const { snapshot } = await stack.snapshots.requestSnapshot({ accountId, volumeId: v.volumeId, asyncBackup: false });
    await save(stack, 'sync-success', snapshot.workflowId);
  }
  if (want('retry-then-success')) {
    await updateSetting(stack.pool, 'backup.max.attempts', 3);
    await updateSetting(stack.pool, 'backup.retry.interval', 3);
    const v = await volume();
    await breakStore();
    const { snapshot } = await stack.snapshots.requestSnapshot({ accountId, volumeId: v.volumeId, asyncBackup: true });
    await waitForFailedAttempt(stack, snapshot.id);
    await fixStore();
    await waitFor(stack, snapshot.id, ['BackedUp']);
    await save(stack, 'retry-then-success', snapshot.workflowId);
  }
  if (want('all-attempts-failed')) {
    await updateSetting(stack.pool, 'backup.max.attempts', 2);
    await updateSetting(stack.pool, 'backup.retry.interval', 1);
    const v = await volume();
    await breakStore();
    const { snapshot } = await stack.snapshots.requestSnapshot({ accountId, volumeId: v.volumeId, asyncBackup: true });
    await waitFor(stack, snapshot.id, ['Error']);
    await fixStore();
    await save(stack, 'all-attempts-failed', snapshot.workflowId);
  }
  if (want('query-during-backup')) {
    await updateSetting(stack.pool, 'backup.max.attempts', 3);
    await updateSetting(stack.pool, 'backup.retry.interval', 3);
    const v = await volume();
    await breakStore();
    const { snapshot } = await stack.snapshots.requestSnapshot({ accountId, volumeId: v.volumeId, asyncBackup: true });
    const handle = stack.client.workflow.getHandle(snapshot.workflowId);
    const decision = await handle.query(mayRunQuery, { kind: 'vm', action: 'destroy', vmId: v.vmId! });
    const status = await handle.query(statusQuery);
    console.log('query during backup:', decision.allowed, status.state);
    await fixStore();
    await waitFor(stack, snapshot.id, ['BackedUp']);
    await save(stack, 'query-during-backup', snapshot.workflowId);
  }
  if (want('primary-failure')) {
    const v = await volume();
    writeFileSync(v.path, 'not a qcow2 image');
    const err = await stack.snapshots.requestSnapshot({ accountId, volumeId: v.volumeId, asyncBackup: true }).catch((e) => e);
    const snap = await getSnapshot(stack.pool, err.snapshotId);
    await eventually(async () => ((await stack.client.workflow.getHandle(snap!.workflowId).describe()).status.name === 'FAILED' ? true : undefined));
    await save(stack, 'primary-failure', snap!.workflowId);
  }
  /** A running VM's disk: the workflow's primary steps go to its host's queue (a host worker with the real activities). */
  const liveSnapshot = async (name: string, until: string[]) => {
    const v = await volume('DATADISK');
    await stack.pool.query("UPDATE virtual_machines SET host_id = (SELECT id FROM hosts WHERE name = 'kvm-host-1') WHERE id = $1", [v.vmId]);
    const taskQueue = stack.env.TEMPORAL_TASK_QUEUE;
    const connection = await NativeConnection.connect({ address: stack.devServer!.address });
    const real = createSnapshotActivities({ pool: stack.pool, drivers: stack.drivers, logger: silentLogger });
    const host = await Worker.create({
      connection,
      namespace: stack.env.TEMPORAL_NAMESPACE,
      taskQueue: hostTaskQueue(taskQueue, 'kvm-host-1'),
      activities: { createSnapshotOnPrimary: real.createSnapshotOnPrimary, deletePrimarySnapshot: real.deletePrimarySnapshot },
    });
    const snapshots = createSnapshotService({
      pool: stack.pool,
      drivers: stack.drivers,
      client: stack.client,
      taskQueue,
      backupTaskQueue: stack.env.TEMPORAL_BACKUP_TASK_QUEUE,
      logger: silentLogger,
      hostTaskQueues: { timeoutSeconds: 30 },
    });
    const id = await host.runUntil(async () => {
      const { snapshot } = await snapshots.requestSnapshot({ accountId, volumeId: v.volumeId, asyncBackup: true });
      await waitFor(stack, snapshot.id, until);
      return snapshot.workflowId;
    });
    await snapshots.close();
    await connection.close();
    await save(stack, name, id);
  };
  if (want('live-vm-on-host-queue')) await liveSnapshot('live-vm-on-host-queue', ['BackedUp']);
  if (want('live-vm-compensated')) {
    await updateSetting(stack.pool, 'backup.max.attempts', 1);
    await breakStore();
    await liveSnapshot('live-vm-compensated', ['Error']);
    await fixStore();
  }
} finally {
  await stack.stop();
}
