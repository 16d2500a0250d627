/** qcow2 helpers for the bench: real data written as a guest would, and bare qemu-img calls. */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { fsyncPath } from '../../storage/common.js';
import { run } from './system.js';

const FILL_CHUNK = 1024 * 1024 * 1024;

/**
 * Writes `bytes` of 0xab from offset 0 into a qcow2 image (allocates every cluster), as a guest filling its
 * disk would, then fsyncs the image. qemu-io takes at most 2 GiB per request, so 1 GiB writes; it can report a
 * refused request with exit status 0, so the allocation is checked afterwards.
 */
export async function fillImage(imagePath: string, bytes: number): Promise<void> {
  const cmds: string[] = [];
  for (let off = 0; off < bytes; off += FILL_CHUNK) cmds.push('-c', `write -P 0xab ${off} ${Math.min(FILL_CHUNK, bytes - off)}`);
  await run('qemu-io', ['-f', 'qcow2', ...cmds, imagePath]);
  await fsyncPath(imagePath);
  const info = JSON.parse((await run('qemu-img', ['info', '-U', '-f', 'qcow2', '--output=json', imagePath])).stdout) as { 'actual-size': number };
  if (info['actual-size'] < bytes) throw new Error(`qemu-io allocated ${info['actual-size']} of ${bytes} bytes in ${imagePath}`);
}

/**
 * `qemu-img snapshot -c` exactly as the KVM driver calls it (format pinned by --image-opts). `innerMs` is timed
 * by a small shell around the call (process start and run of qemu-img alone); `wallMs` is seen from this process
 * and includes forking the shell out of this (large) process.
 */
export async function bareSnapshotCreate(imagePath: string, tag: string): Promise<{ innerMs: number; wallMs: number }> {
  const script = 's=$(date +%s%N); qemu-img snapshot -q --image-opts -c "$1" "$2" || exit 1; e=$(date +%s%N); echo $(( (e - s) / 1000 ))';
  const t = performance.now();
  const { stdout } = await run('sh', ['-c', script, 'sh', tag, `driver=qcow2,file.filename=${imagePath.replaceAll(',', ',,')}`]);
  return { wallMs: performance.now() - t, innerMs: Number(stdout.trim()) / 1000 };
}

/** sha256 of a file, streamed; `chunk` is the read size (the driver uses the stream default, 64 KiB). */
export async function sha256File(file: string, chunk?: number): Promise<string> {
  const hash = createHash('sha256');
  for await (const c of createReadStream(file, chunk ? { highWaterMark: chunk } : {})) hash.update(c as Buffer);
  return hash.digest('hex');
}

export { fsyncPath };
