import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { ApplicationFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSnapshotActivities } from '../../activities/snapshot-activities.js';
import { installTemporalRuntime } from '../../app/runtime.js';
import type { Pool } from '../../db/pool.js';
import { getBackupChain, getSnapshot, getStoreRefs, insertSnapshot, type SnapshotRecord } from '../../db/snapshots.js';
import { startTestStack, type TestStack } from '../../harness/stack.js';
import { silentLogger } from '../../observability/logger.js';
import { checkBackupChain } from '../../storage/chain.js';
import type { BackupResult, StorageDriver } from '../../storage/driver.js';
import { ACTIVITY_FAILURE_TYPES, type BackupAttemptInput } from '../../workflows/definitions.js';
import { insertAccount, insertVolume, sha256File, writePattern } from '../support/fixtures.js';

const exec = promisify(execFile);
const MiB = 1024 * 1024;

/** A promise to wait on and the function that settles it: an ordering barrier, not a timer. */
function barrier(): { wait: Promise<void>; open: () => void } {
  let open!: () => void;
  const wait = new Promise<void>((r) => (open = r));
  return { wait, open };
}

/** `inner` with its backupSnapshot replaced by `backup` (every other method is the real driver's). */
function withBackup(inner: StorageDriver, backup: StorageDriver['backupSnapshot']): StorageDriver {
  return new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop === 'backupSnapshot') return backup;
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

/**
 * Executions of one backup that overlap (docs/design.md §5, fenced attempts) and a copy failure whose worker died
 * before Temporal heard of it. The backup activity is called directly, as Temporal's executions would run it,
 * against the real stack (PostgreSQL, qcow2 files, qemu-img); the workflow is not involved.
 */
describe('fenced backup attempts', () => {
  let stack: TestStack;
  let driver: StorageDriver;
  let accountId: string;
  let storePath: string;

  beforeAll(async () => {
    installTemporalRuntime(silentLogger, false);
    stack = await startTestStack();
    driver = stack.drivers.KVM!;
    accountId = await insertAccount(stack.pool);
    storePath = (await stack.pool.query('SELECT path FROM image_stores')).rows[0].path;
  });
  afterAll(async () => {
    await stack?.stop();
  });

  const activitiesWith = (kvm: StorageDriver, pool: Pool = stack.pool) =>
    createSnapshotActivities({ pool, drivers: { KVM: kvm }, logger: silentLogger, progressIntervalMs: 50 });
  /** One execution of the backup activity (MockActivityEnvironment.run cannot infer its result type). */
  const backupIn = (env: MockActivityEnvironment, kvm: StorageDriver, input: BackupAttemptInput) =>
    env.run(activitiesWith(kvm).backupSnapshotToSecondary, input) as Promise<BackupResult>;

  /** A snapshot BackedUp through its workflow. */
  const take = async (volumeId: string): Promise<SnapshotRecord> => {
    const { snapshot } = await stack.snapshots.requestSnapshot({ accountId, volumeId, asyncBackup: false });
    expect(snapshot.status).toBe('BackedUp');
    return (await getSnapshot(stack.pool, snapshot.id))!;
  };

  /** A snapshot created on primary (CreatedOnPrimary) whose backup no workflow runs: the test runs its executions. */
  const createdOnPrimary = async (volumeId: string, sizeBytes: number): Promise<SnapshotRecord> => {
    const id = randomUUID();
    await insertSnapshot(stack.pool, {
      id,
      accountId,
      volumeId,
      vmId: null,
      volumeType: 'ROOT',
      name: `fenced-${id.slice(0, 8)}`,
      asyncBackup: true,
      workflowId: `snapshot-${id}`,
      idempotencyKey: null,
      backupMaxAttempts: 3,
      backupRetryInterval: 300,
      backupQueueTimeout: 3600,
      backupBytesTotal: sizeBytes,
      backupIncremental: true,
      snapshotDeltaMax: 16,
    });
    await new MockActivityEnvironment().run(activitiesWith(driver).createSnapshotOnPrimary, { snapshotId: id, volumeId });
    const s = (await getSnapshot(stack.pool, id))!;
    expect(s.status).toBe('CreatedOnPrimary');
    return s;
  };

  /** What a backup file says it is a delta on (its backing file's name), or null for a full backup. */
  const backingOf = async (file: string): Promise<string | null> => {
    const { stdout } = await exec('qemu-img', ['info', '-U', '-f', 'qcow2', '--output=json', file]);
    return (JSON.parse(stdout) as { 'backing-filename'?: string })['backing-filename'] ?? null;
  };

  it('two executions of one backup at once (the first still running when the second starts) leave one consistent chain, every checksum matching its file', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 16 * MiB });
    await writePattern(vol.path, 0x11, 0, 4 * MiB);
    const s1 = await take(vol.volumeId);
    await writePattern(vol.path, 0x22, 4 * MiB, 2 * MiB);
    const s2 = await createdOnPrimary(vol.volumeId, 16 * MiB);

    // Execution A of attempt 1: its copy is done (written and renamed into place, as the driver does), and then
    // it stalls before it records anything, long enough for Temporal to time its heartbeat out.
    const aCopied = barrier();
    const aResume = barrier();
    const stalling = withBackup(driver, async (...args) => {
      const result = await driver.backupSnapshot(...args);
      aCopied.open();
      await aResume.wait;
      return result;
    });
    const a = backupIn(new MockActivityEnvironment({ attempt: 1 }), stalling, { snapshotId: s2.id, attempt: 1, maxAttempts: 3 })
      .then(
        (result) => ({ ok: true as const, result }),
        (err: unknown) => ({ ok: false as const, err }),
      );
    await aCopied.wait;
    expect((await getStoreRefs(stack.pool, s2.id)).find((r) => r.role === 'Image')).toMatchObject({ state: 'Creating', parentSnapshotId: s1.id });

    // Meanwhile another snapshot of the volume is backed up: the latest backup of the volume is now S3's.
    await writePattern(vol.path, 0x33, 8 * MiB, 2 * MiB);
    const s3 = await take(vol.volumeId);

    // Execution B of the same attempt (Temporal's retry after A's heartbeat timeout) runs to the end: a delta on S3.
    const b = await backupIn(new MockActivityEnvironment({ attempt: 2 }), driver, {
      snapshotId: s2.id,
      attempt: 1,
      maxAttempts: 3,
    });
    expect(b.parentSnapshotId).toBe(s3.id);

    // A wakes up and tries to record its copy.
    aResume.open();
    const aOutcome = await a;

    // One chain, consistent: every member's checksum is its file's, and the file is a delta on the recorded parent.
    const chain = await getBackupChain(stack.pool, s2.id);
    for (const member of chain) {
      expect(await sha256File(join(storePath, member.installPath)), `checksum of ${member.snapshotId}'s backup`).toBe(member.checksum);
    }
    for (const [member, parent] of chain.map((m, i) => [m, chain[i + 1]] as const)) {
      expect(await backingOf(join(storePath, member.installPath)), `backing file of ${member.snapshotId}'s backup`).toBe(parent ? `${parent.snapshotId}.qcow2` : null);
    }
    expect(chain.map((m) => m.snapshotId)).toEqual([s2.id, s3.id, s1.id]);
    expect(chain[0]).toMatchObject({ state: 'Ready', checksum: b.checksum, parentSnapshotId: s3.id, chainLength: 3 });
    expect(await checkBackupChain(driver, storePath, chain, { full: true })).toBeNull();
    const after = (await getSnapshot(stack.pool, s2.id))!;
    expect(after).toMatchObject({ status: 'BackedUp', lastError: null, nextAttemptAt: null });

    // A was superseded: it stops as an interruption (no attempt spent) and wrote nothing.
    expect(aOutcome.ok).toBe(false);
    const err = (aOutcome as { err: unknown }).err;
    expect(err).toBeInstanceOf(ApplicationFailure);
    expect(err).toMatchObject({ type: ACTIVITY_FAILURE_TYPES.interrupted, nonRetryable: false });
    expect((err as Error).message).toMatch(/superseded/);
    // No temporary file is left behind, and the backup restores S2's point-in-time content.
    const dir = dirname(join(storePath, chain[0]!.installPath));
    expect(readdirSync(dir).filter((n) => n.includes('.partial-'))).toEqual([]);
    const expected = join(stack.dataDir, `expected-${randomUUID()}.qcow2`);
    await exec('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'qcow2', '-l', `snapshot.name=${s2.id}`, vol.path, expected]);
    await exec('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'qcow2', join(storePath, chain[0]!.installPath), expected]);
  });

  it('an execution that starts copying after a newer one finished neither replaces its file nor removes its temporary files', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 16 * MiB });
    await writePattern(vol.path, 0x44, 0, 4 * MiB);
    const s1 = await createdOnPrimary(vol.volumeId, 16 * MiB);

    // Execution A begins (its Image ref planned) and stalls before its copy starts.
    const aBegan = barrier();
    const aResume = barrier();
    const stalling = withBackup(driver, async (...args) => {
      aBegan.open();
      await aResume.wait;
      return driver.backupSnapshot(...args);
    });
    const a = backupIn(new MockActivityEnvironment({ attempt: 1 }), stalling, { snapshotId: s1.id, attempt: 1, maxAttempts: 3 })
      .then(
        (result) => ({ ok: true as const, result }),
        (err: unknown) => ({ ok: false as const, err }),
      );
    await aBegan.wait;
    const b = await backupIn(new MockActivityEnvironment({ attempt: 2 }), driver, {
      snapshotId: s1.id,
      attempt: 1,
      maxAttempts: 3,
    });
    const file = join(storePath, b.installPath);
    expect(await sha256File(file)).toBe(b.checksum);
    const inode = (await exec('stat', ['-c', '%i', file])).stdout.trim();

    aResume.open();
    const aOutcome = await a;
    expect(aOutcome.ok).toBe(false);
    expect((aOutcome as { err: unknown }).err).toMatchObject({ type: ACTIVITY_FAILURE_TYPES.interrupted });
    // B's file is still the one B hashed and recorded (not replaced by A's copy), and A removed its own temporary file.
    expect((await exec('stat', ['-c', '%i', file])).stdout.trim()).toBe(inode);
    expect(await sha256File(file)).toBe(b.checksum);
    expect((await getStoreRefs(stack.pool, s1.id)).find((r) => r.role === 'Image')).toMatchObject({ state: 'Ready', checksum: b.checksum });
    expect(readdirSync(dirname(file)).filter((n) => n.includes('.partial-'))).toEqual([]);
    const events = await stack.pool.query(`SELECT description FROM events WHERE resource_id = $1 AND description LIKE '%failed%'`, [s1.id]);
    expect(events.rows).toEqual([]);
  });

  it('a copy failure recorded before its worker died is reported again by a re-delivery of that attempt; the next attempt copies', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 16 * MiB });
    await writePattern(vol.path, 0x55, 0, 4 * MiB);
    const s = await createdOnPrimary(vol.volumeId, 16 * MiB);
    const input = { snapshotId: s.id, attempt: 1, maxAttempts: 3 };

    // Attempt 1 fails its copy; its worker records the failure and dies before Temporal hears of it.
    const failing = withBackup(driver, async () => {
      throw new Error('image store unusable (injected)');
    });
    const first = await backupIn(new MockActivityEnvironment({ attempt: 1 }), failing, input).catch((e: unknown) => e);
    expect(first).toMatchObject({ type: ACTIVITY_FAILURE_TYPES.copyFailed, nonRetryable: true });

    // Temporal times the dead worker's heartbeat out and delivers attempt 1 again, to a healthy worker: the copy
    // failure is reported (and so counted by the workflow), not replaced by a copy.
    const copied: string[] = [];
    const healthy = withBackup(driver, async (...args) => {
      copied.push(args[2].snapshotId);
      return driver.backupSnapshot(...args);
    });
    const again = await backupIn(new MockActivityEnvironment({ attempt: 2 }), healthy, input).catch((e: unknown) => e);
    expect(again).toBeInstanceOf(ApplicationFailure);
    expect(again).toMatchObject({ type: ACTIVITY_FAILURE_TYPES.copyFailed, nonRetryable: true, message: (first as Error).message });
    expect(copied).toEqual([]);
    const row = (await getSnapshot(stack.pool, s.id))!;
    expect(row).toMatchObject({ status: 'BackingUp', backupAttempts: 1 });
    expect(row.lastError).toContain('image store unusable (injected)');
    // The failure's event was recorded once, with the failure itself.
    const events = await stack.pool.query(`SELECT description FROM events WHERE resource_id = $1 AND description LIKE 'backup attempt%failed%'`, [s.id]);
    expect(events.rows).toHaveLength(1);

    // Attempt 2 (the workflow's next attempt after backup.retry.interval) copies normally.
    const result = await backupIn(new MockActivityEnvironment({ attempt: 1 }), healthy, { ...input, attempt: 2 });
    expect(copied).toEqual([s.id]);
    expect(await sha256File(join(storePath, result.installPath))).toBe(result.checksum);
    expect(await getSnapshot(stack.pool, s.id)).toMatchObject({ status: 'BackedUp', backupAttempts: 2, lastError: null });
  });

  it('progress writes of one execution never overlap (a slow database sees one at a time) and none is pending once the backup is recorded', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 16 * MiB });
    await writePattern(vol.path, 0x66, 0, 4 * MiB);
    const s = await createdOnPrimary(vol.volumeId, 16 * MiB);

    // Every progress write takes three ticks of the progress timer to commit.
    let inFlight = 0;
    let most = 0;
    let writes = 0;
    const slow = new Proxy(stack.pool, {
      get(target, prop, receiver) {
        const v = Reflect.get(target, prop, receiver) as unknown;
        if (prop !== 'query') return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        return async (text: string, values?: unknown[]) => {
          if (!text.startsWith('UPDATE snapshots SET backup_bytes_done')) return target.query(text, values);
          inFlight += 1;
          writes += 1;
          most = Math.max(most, inFlight);
          try {
            await new Promise((r) => setTimeout(r, 150));
            return await target.query(text, values);
          } finally {
            inFlight -= 1;
          }
        };
      },
    });
    // The copy reports progress for about twenty ticks before it runs.
    const reporting = withBackup(driver, async (...args) => {
      for (let i = 1; i <= 20; i++) {
        args[3]?.onProgress?.({ bytesDone: i * 256 * 1024, bytesTotal: 16 * MiB });
        await new Promise((r) => setTimeout(r, 50));
      }
      return driver.backupSnapshot(...args);
    });
    const env = new MockActivityEnvironment({ attempt: 1 });
    const result = (await env.run(activitiesWith(reporting, slow).backupSnapshotToSecondary, { snapshotId: s.id, attempt: 1, maxAttempts: 3 })) as BackupResult;
    expect(inFlight, 'progress writes still pending after the backup was recorded').toBe(0);
    expect(writes).toBeGreaterThan(1);
    expect(most).toBe(1);
    expect(await getSnapshot(stack.pool, s.id)).toMatchObject({ status: 'BackedUp', backupBytesDone: 16 * MiB });
    expect(result.checksum).toBeTruthy();
  });
});
