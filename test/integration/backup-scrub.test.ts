import { open } from 'node:fs/promises';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { installTemporalRuntime } from '../../app/runtime.js';
import { updateSetting } from '../../db/settings.js';
import { getStoreRefs } from '../../db/snapshots.js';
import { startTestStack, type TestStack } from '../../harness/stack.js';
import { silentLogger } from '../../observability/logger.js';
import { BACKUP_SCRUB_SCHEDULE_ID } from '../../services/backup-scrub.js';
import type { Caller } from '../../services/caller.js';
import type { StorageDriver } from '../../storage/driver.js';
import { insertAccount, insertVolume, writePattern } from '../support/fixtures.js';

const MiB = 1024 * 1024;

/**
 * The backup scrub (docs/design.md §14) through the real stack: it re-hashes stored backups, marks one whose
 * bytes changed (and every backup whose chain holds it) as faulty with events, and the next backup is full.
 */
describe('the backup scrub', () => {
  let stack: TestStack;
  let driver: StorageDriver;
  let accountId: string;
  let caller: Caller;
  let storePath: string;

  beforeAll(async () => {
    installTemporalRuntime(silentLogger, false);
    stack = await startTestStack();
    driver = stack.drivers.KVM!;
    accountId = await insertAccount(stack.pool);
    caller = { accountId, role: 'user' };
    storePath = (await stack.pool.query('SELECT path FROM image_stores')).rows[0].path;
  });
  afterAll(async () => {
    await stack?.stop();
  });

  const backupFile = (volumeId: string, snapshotId: string) => join(storePath, 'snapshots', accountId, volumeId, `${snapshotId}.qcow2`);
  const take = async (volumeId: string) => {
    const { snapshot } = await stack.snapshots.requestSnapshot({ accountId, volumeId, asyncBackup: false });
    expect(snapshot.status).toBe('BackedUp');
    return stack.snapshots.get(caller, snapshot.id);
  };
  const imageRef = async (snapshotId: string) => (await getStoreRefs(stack.pool, snapshotId)).find((r) => r.role === 'Image')!;
  /** Flips one byte in the middle of a file, as bit rot on the store would. */
  const rot = async (file: string) => {
    const fh = await open(file, 'r+');
    try {
      const { size } = await fh.stat();
      const at = Math.floor(size / 2);
      const b = Buffer.alloc(1);
      await fh.read(b, 0, 1, at);
      b[0] = b[0]! ^ 0xff;
      await fh.write(b, 0, 1, at);
    } finally {
      await fh.close();
    }
  };

  it('is a schedule of its own, timed by backup.scrub.interval', async () => {
    const d = await stack.client.schedule.getHandle(BACKUP_SCRUB_SCHEDULE_ID).describe();
    expect(d.spec.intervals?.[0]?.every).toBe(86_400_000);
    expect(d.action).toMatchObject({ type: 'startWorkflow', workflowType: 'backupScrubWorkflow' });
  });

  it('finds a rotten chain member: the member and its dependants are faulty, with events; restores refuse; the next backup is full', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 32 * MiB });
    await writePattern(vol.path, 0x61, 0, 8 * MiB);
    const s1 = await take(vol.volumeId);
    await writePattern(vol.path, 0x62, 0, MiB);
    const s2 = await take(vol.volumeId);
    await writePattern(vol.path, 0x63, MiB, MiB);
    const s3 = await take(vol.volumeId);
    expect(s3.backup).toMatchObject({ kind: 'incremental', parentSnapshotId: s2.id });

    // A first pass finds everything matching and says when.
    const clean = await stack.backupScrub.runNow();
    expect(clean.faulty).toEqual([]);
    expect(clean.verified).toBeGreaterThanOrEqual(3);
    for (const s of [s1, s2, s3]) expect((await imageRef(s.id)).verifiedAt).not.toBeNull();

    // Nothing is due again before backup.scrub.reverify: a second pass reads nothing.
    expect(await stack.backupScrub.runNow()).toMatchObject({ verified: 0, bytesRead: 0, faulty: [] });

    await rot(backupFile(vol.volumeId, s2.id));
    await updateSetting(stack.pool, 'backup.scrub.reverify', 60);
    await stack.pool.query(`UPDATE snapshot_store_ref SET verified_at = now() - interval '1 hour' WHERE verified_at IS NOT NULL`);
    try {
      const found = await stack.backupScrub.runNow();
      expect(found.faulty).toEqual([expect.objectContaining({ snapshotId: s2.id, dependants: [s3.id] })]);
      expect(found.faulty[0]!.fault).toMatch(/sha256 is [0-9a-f]{64}, not the [0-9a-f]{64} recorded/);
    } finally {
      await updateSetting(stack.pool, 'backup.scrub.reverify', 604_800);
    }
    expect((await imageRef(s1.id)).fault).toBeNull();
    expect((await imageRef(s2.id)).fault).toMatch(/sha256/);
    expect((await imageRef(s3.id)).fault).toMatch(new RegExp(`backup of snapshot ${s2.id} in its chain is faulty`));
    const events = await stack.pool.query(
      `SELECT resource_id FROM events WHERE type = 'SNAPSHOT.BACKUP' AND level = 'ERROR' AND details->>'foundBy' = 'scrub' AND resource_id = ANY($1)`,
      [[s2.id, s3.id]],
    );
    expect(events.rows.map((r) => r.resource_id).sort()).toEqual([s2.id, s3.id].sort());

    // Restores of the faulty backups are refused with a clear error; s1's still works.
    await driver.deleteSnapshot(vol.path, s3.id);
    await expect(stack.snapshots.createVolume(caller, s3.id, {})).rejects.toMatchObject({ code: 'BACKUP_CORRUPT' });
    await expect(stack.snapshots.createVolume(caller, s1.id, {})).resolves.toBeDefined();

    // The next backup does not build on a bad chain.
    await writePattern(vol.path, 0x64, 0, MiB);
    const s4 = await take(vol.volumeId);
    expect(s4.backup).toMatchObject({ kind: 'full', parentSnapshotId: null, chainLength: 1 });
  });

  it('a backup being deleted is not a fault: a file gone under a Destroying snapshot is left to the delete', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 16 * MiB });
    await writePattern(vol.path, 0x71, 0, 4 * MiB);
    await stack.pool.query(`UPDATE configuration SET value = '0' WHERE name = 'backup.incremental'`);
    let s: Awaited<ReturnType<typeof take>>;
    try {
      s = await take(vol.volumeId);
    } finally {
      await stack.pool.query(`UPDATE configuration SET value = '1' WHERE name = 'backup.incremental'`);
    }
    // A delete that committed its intent and removed the file, then stopped (crash) before its result.
    await stack.pool.query(`UPDATE snapshots SET status = 'Destroying' WHERE id = $1`, [s.id]);
    rmSync(backupFile(vol.volumeId, s.id));
    const run = await stack.backupScrub.runNow();
    expect(run.faulty.map((f) => f.snapshotId)).not.toContain(s.id);
    expect((await imageRef(s.id)).fault).toBeNull();
  });

  it('a missing file of a live backup is a fault', async () => {
    const vol = await insertVolume(stack.pool, driver, { accountId, sizeBytes: 16 * MiB });
    await writePattern(vol.path, 0x81, 0, 4 * MiB);
    const s = await take(vol.volumeId);
    rmSync(backupFile(vol.volumeId, s.id));
    const run = await stack.backupScrub.runNow();
    expect(run.faulty).toContainEqual(expect.objectContaining({ snapshotId: s.id, fault: 'its file is missing' }));
  });

  it('backup.scrub.interval 0 pauses the schedule, and a value above 0 resumes it', async () => {
    const admin: Caller = { accountId, role: 'admin' };
    const { createServices } = await import('../../services/index.js');
    const services = createServices(stack);
    const handle = stack.client.schedule.getHandle(BACKUP_SCRUB_SCHEDULE_ID);
    await services.configurations.update(admin, 'backup.scrub.interval', 0);
    expect((await handle.describe()).state.paused).toBe(true);
    await services.configurations.update(admin, 'backup.scrub.interval', 3600);
    const d = await handle.describe();
    expect(d.state.paused).toBe(false);
    expect(d.spec.intervals?.[0]?.every).toBe(3_600_000);
  });
});
