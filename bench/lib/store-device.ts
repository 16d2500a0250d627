/**
 * An image store on a block device of its own (a loop device over a sparse file, ext4), so a phase can count
 * the bytes read from the store: the device's sectors read (/sys/block/<dev>/stat), with the page cache dropped
 * before each measured step so a read is a read of the store, not of memory. Needs root (losetup, mount).
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { run } from './system.js';

export interface StoreDevice {
  /** Where the file system is mounted: the image store's root. */
  dir: string;
  /** Bytes read from the device since it was attached. */
  readBytes(): number;
  /** Writes dirty pages back and drops the page cache (so the next reads reach the device). */
  dropCaches(): Promise<void>;
  detach(): Promise<void>;
}

export async function attachStoreDevice(dir: string, sizeBytes: number): Promise<StoreDevice> {
  if (process.getuid?.() !== 0) throw new Error('counting image store reads needs root (a loop device)');
  const backing = `${dir}.img`;
  mkdirSync(dir, { recursive: true });
  await run('truncate', ['-s', String(sizeBytes), backing]);
  const loop = (await run('losetup', ['-f', '--show', backing])).stdout.trim();
  const detachLoop = () => run('losetup', ['-d', loop]).catch(() => undefined);
  try {
    await run('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', loop]);
    await run('mount', [loop, dir]);
  } catch (err) {
    await detachLoop();
    throw err;
  }
  const stat = `/sys/block/${path.basename(loop)}/stat`;
  return {
    dir,
    // Field 3 of the block stat: sectors read, 512 bytes each whatever the device's own sector size.
    readBytes: () => Number(readFileSync(stat, 'utf8').trim().split(/\s+/)[2]) * 512,
    async dropCaches() {
      await run('sync', []);
      writeFileSync('/proc/sys/vm/drop_caches', '3\n');
    },
    async detach() {
      await run('umount', [dir]).catch(() => run('umount', ['-l', dir]));
      await detachLoop();
      await rm(backing, { force: true });
    },
  };
}
