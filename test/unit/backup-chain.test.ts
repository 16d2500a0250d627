import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkBackupChain, type ChainMember } from '../../storage/chain.js';
import type { StorageDriver } from '../../storage/driver.js';

const id = (n: number) => `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`;
const acct = id(900);
const vol = id(901);
const member = (n: number, parent: number | null, chainLength: number, over: Partial<ChainMember> = {}): ChainMember => ({
  snapshotId: id(n),
  installPath: `snapshots/${acct}/${vol}/${id(n)}.qcow2`,
  state: 'Ready',
  sizeBytes: 1,
  checksum: `sha256:${'a'.repeat(64)}`,
  parentSnapshotId: parent === null ? null : id(parent),
  chainLength,
  ...over,
});
/** A driver whose verifyBackup answers from a set of good install paths, and records what it was asked. */
const fakeDriver = (bad: Set<string> = new Set()) => {
  const asked: string[] = [];
  const driver = {
    hypervisor: 'KVM',
    verifyBackup: async (_root: string, installPath: string) => {
      asked.push(installPath);
      return !bad.has(installPath);
    },
  } as unknown as StorageDriver;
  return { driver, asked };
};

describe('checkBackupChain (docs/design.md §14)', () => {
  const chain = [member(3, 2, 3), member(2, 1, 2), member(1, null, 1)];

  it('a whole chain verifies in full: every file', async () => {
    const { driver, asked } = fakeDriver();
    expect(await checkBackupChain(driver, '/store', chain, { full: true })).toBeNull();
    expect(asked).toEqual(chain.map((m) => m.installPath));
  });

  it('a member whose file does not verify fails the chain, naming it', async () => {
    const { driver } = fakeDriver(new Set([chain[2]!.installPath]));
    expect(await checkBackupChain(driver, '/store', chain, { full: true })).toMatch(new RegExp(`backup of ${id(1)} does not match`));
  });

  it('a broken link, a short chain or a member not Ready fails', async () => {
    const { driver } = fakeDriver();
    expect(await checkBackupChain(driver, '/store', [member(3, 2, 3), member(1, null, 1)], { full: true })).toMatch(/chain of 3 backup\(s\) has 2/);
    expect(await checkBackupChain(driver, '/store', [member(3, 2, 2), member(1, null, 1)], { full: true })).toMatch(/does not link/);
    expect(await checkBackupChain(driver, '/store', [member(2, 1, 2), member(1, null, 1, { state: 'Destroyed' })], { full: true })).toMatch(/is Destroyed/);
    expect(await checkBackupChain(driver, '/store', [], { full: true })).toBe('no backup');
  });

  it('the light check reads no file: it finds a missing member file by its metadata', async () => {
    const { driver, asked } = fakeDriver();
    expect(await checkBackupChain(driver, '/nonexistent-store', chain, { full: false })).toMatch(new RegExp(`backup file of ${id(3)} is missing`));
    expect(asked).toEqual([]);
  });

  it('the light check of a whole chain hashes no member, not even the top (an incremental never re-reads its parent)', async () => {
    const store = await mkdtemp(path.join(tmpdir(), 'chain-'));
    try {
      for (const m of chain) {
        await mkdir(path.dirname(path.join(store, m.installPath)), { recursive: true });
        await writeFile(path.join(store, m.installPath), 'x');
      }
      const { driver, asked } = fakeDriver(new Set(chain.map((m) => m.installPath)));
      expect(await checkBackupChain(driver, store, chain, { full: false })).toBeNull();
      expect(asked).toEqual([]);
      // A size that differs from the record is caught without reading the file.
      await writeFile(path.join(store, chain[1]!.installPath), 'xy');
      expect(await checkBackupChain(driver, store, chain, { full: false })).toMatch(new RegExp(`backup file of ${id(2)} has 2 bytes, 1 on record`));
      expect(asked).toEqual([]);
    } finally {
      await rm(store, { recursive: true, force: true });
    }
  });

  it('a member the scrub marked faulty fails the chain, light or full, naming it', async () => {
    const { driver, asked } = fakeDriver();
    const faulty = [member(3, 2, 3), member(2, 1, 2, { fault: 'sha256 mismatch' }), member(1, null, 1)];
    expect(await checkBackupChain(driver, '/nonexistent-store', faulty, { full: false })).toMatch(new RegExp(`backup of ${id(2)} is marked faulty by the scrub`));
    expect(await checkBackupChain(driver, '/store', faulty, { full: true })).toMatch(new RegExp(`backup of ${id(2)} is marked faulty`));
    expect(asked).toEqual([]);
  });
});
