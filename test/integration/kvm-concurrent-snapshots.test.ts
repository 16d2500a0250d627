/**
 * Snapshots of one volume taken and backed up at the same time (the seed's "snapshot on the same volume"):
 * every backup reads its snapshot while others are being written into the same image's snapshot table.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKvmStorageDriver } from '../../storage/kvm.js';

const exec = promisify(execFile);
const MiB = 1024 * 1024;
const ROUNDS = 6;
const PER_ROUND = 16;

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'volsnap-concurrent-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Rounds of snapshots taken at once, each backed up as it is taken; the failures' first lines. */
async function rounds(backup: (vol: string, snapshotId: string) => Promise<string>, vol: string): Promise<string[]> {
  const failures: string[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    // Each round's snapshots see the same data; the next round's first cluster differs, so a backup that read a
    // wrong snapshot would show it.
    const pattern = (0x20 + round).toString(16);
    await exec('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x${pattern} 0 64k`, vol]);
    const results = await Promise.allSettled(
      Array.from({ length: PER_ROUND }, async () => {
        const snapshotId = randomUUID();
        const file = await backup(vol, snapshotId);
        await exec('qemu-io', ['-f', 'qcow2', '-r', '-c', `read -P 0x${pattern} 0 64k`, file]).catch(() => {
          throw new Error(`backup of ${snapshotId} does not hold round ${round}'s data`);
        });
      }),
    );
    for (const r of results) if (r.status === 'rejected') failures.push(String((r.reason as Error).message).split('\n')[0]!);
  }
  return failures;
}

describe('concurrent snapshots of one volume', () => {
  it(`backs up every one of ${ROUNDS} rounds of ${PER_ROUND} snapshots taken at once, each with its own bytes`, async () => {
    const driver = createKvmStorageDriver({ logger: pino({ level: 'silent' }) });
    const volumeId = randomUUID();
    const accountId = randomUUID();
    const store = path.join(dir, 'store');
    const { path: vol } = await driver.createVolume(path.join(dir, 'pool'), volumeId, 64 * MiB);
    await exec('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 16M', vol]);
    const failures = await rounds(async (v, snapshotId) => {
      await driver.createSnapshot(v, snapshotId);
      const backup = await driver.backupSnapshot(v, store, { accountId, volumeId, snapshotId });
      return path.join(store, backup.installPath);
    }, vol);
    expect(failures).toEqual([]);
  });

  it(`writes every delta of ${ROUNDS} rounds of ${PER_ROUND} snapshots taken at once`, async () => {
    // Content comparison reads each snapshot through a qemu-nbd export, which opens the image on its own.
    const driver = createKvmStorageDriver({ logger: pino({ level: 'silent' }), deltaMethod: 'rebase' });
    const volumeId = randomUUID();
    const accountId = randomUUID();
    const store = path.join(dir, 'store-delta');
    const { path: vol } = await driver.createVolume(path.join(dir, 'pool'), volumeId, 64 * MiB);
    await exec('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 16M', vol]);
    const base = randomUUID();
    await driver.createSnapshot(vol, base);
    const full = await driver.backupSnapshot(vol, store, { accountId, volumeId, snapshotId: base });
    const failures = await rounds(async (v, snapshotId) => {
      await driver.createSnapshot(v, snapshotId);
      const parent = { snapshotId: base, installPath: full.installPath };
      const backup = await driver.backupSnapshot(v, store, { accountId, volumeId, snapshotId }, { parent });
      expect(backup.parentSnapshotId).toBe(base);
      return path.join(store, backup.installPath);
    }, vol);
    expect(failures).toEqual([]);
  });
});
