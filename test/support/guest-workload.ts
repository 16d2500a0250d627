/**
 * Verifies the test guest's workload (scripts/guest/init) in a disk image or a backup of one: whether the
 * region holds a state the disk actually had. The guest writes block seq=N to slot N mod SLOTS, one at a time,
 * so the only states the disk ever has are: every slot k holds seq = M - ((M - k) mod SLOTS) for the highest
 * seq M (slots at or before M's from M's wave, the rest from the wave before), slots never reached still zero.
 * A torn, corrupt, misplaced or stale block, or one from a later instant than its neighbours, breaks that.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const exec = promisify(execFile);

/** The guest's layout (scripts/guest/init: BASE, SLOTS). */
export const WORKLOAD = { blockSize: 4096, headerSize: 128, baseBlock: 256, slots: 64 } as const;
export const WORKLOAD_OFFSET = WORKLOAD.baseBlock * WORKLOAD.blockSize;
export const WORKLOAD_BYTES = WORKLOAD.slots * WORKLOAD.blockSize;

export interface WorkloadVerdict {
  /** The region is a state the disk had, with at least one block written. */
  ok: boolean;
  /** The highest valid seq (-1: none). */
  maxSeq: number;
  /** How many slots hold a valid block. */
  written: number;
  problems: string[];
}

/** The block the guest writes for `seq` (what `yes "seq=N slot=K" | head -c 3968` and its header make). */
export function workloadBlock(seq: number, slots: number = WORKLOAD.slots): Buffer {
  const slot = seq % slots;
  const body = Buffer.alloc(WORKLOAD.blockSize - WORKLOAD.headerSize);
  const line = Buffer.from(`seq=${seq} slot=${slot}\n`);
  for (let i = 0; i < body.length; i += line.length) line.copy(body, i);
  const sum = createHash('sha256').update(body).digest('hex');
  const header = `VOLSNAP seq=${seq} slot=${slot} of=${slots} sum=${sum}`.padEnd(WORKLOAD.headerSize - 1, ' ') + '\n';
  return Buffer.concat([Buffer.from(header), body]);
}

const HEADER = /^VOLSNAP seq=(\d+) slot=(\d+) of=(\d+) sum=([0-9a-f]{64}) *\n$/;

/** Checks a region (SLOTS blocks) as read from the disk. Pure. */
export function checkRegion(region: Buffer, slots: number = WORKLOAD.slots): WorkloadVerdict {
  const problems: string[] = [];
  const seqs: Array<number | null> = [];
  for (let k = 0; k < slots; k++) {
    const block = region.subarray(k * WORKLOAD.blockSize, (k + 1) * WORKLOAD.blockSize);
    if (block.length < WORKLOAD.blockSize) {
      problems.push(`slot ${k}: region ends early`);
      seqs.push(null);
      continue;
    }
    if (block.every((b) => b === 0)) {
      seqs.push(null);
      continue;
    }
    const m = HEADER.exec(block.subarray(0, WORKLOAD.headerSize).toString('latin1'));
    if (!m) {
      problems.push(`slot ${k}: no valid header`);
      seqs.push(NaN);
      continue;
    }
    const [seq, slot, of, sum] = [Number(m[1]), Number(m[2]), Number(m[3]), m[4]!];
    const body = block.subarray(WORKLOAD.headerSize);
    if (createHash('sha256').update(body).digest('hex') !== sum) problems.push(`slot ${k}: seq=${seq}: checksum mismatch (torn or corrupt)`);
    else if (slot !== k || of !== slots || seq % slots !== k) problems.push(`slot ${k}: holds seq=${seq} slot=${slot} of=${of} (misplaced)`);
    else if (!block.equals(workloadBlock(seq, slots))) problems.push(`slot ${k}: seq=${seq}: content is not the guest's`);
    else {
      seqs.push(seq);
      continue;
    }
    seqs.push(NaN);
  }
  const valid = seqs.filter((s): s is number => typeof s === 'number' && !Number.isNaN(s));
  const maxSeq = valid.length ? Math.max(...valid) : -1;
  if (maxSeq < 0) {
    if (!problems.length) problems.push('no workload block written');
  } else {
    // The one instant the highest block fixes: each slot's seq follows from it.
    for (let k = 0; k < slots; k++) {
      const s = seqs[k];
      if (s === undefined || Number.isNaN(s)) continue;
      const expected = maxSeq - ((((maxSeq - k) % slots) + slots) % slots);
      if (expected < 0) {
        if (s !== null) problems.push(`slot ${k}: seq=${s} but the highest seq ${maxSeq} has not reached this slot yet`);
      } else if (s === null) problems.push(`slot ${k}: unwritten, but seq=${expected} was written before seq=${maxSeq}`);
      else if (s !== expected) problems.push(`slot ${k}: seq=${s}, not seq=${expected} (not one instant with seq=${maxSeq})`);
    }
  }
  return { ok: problems.length === 0, maxSeq, written: valid.length, problems };
}

/**
 * Reads the workload region of a disk image (qcow2 or raw; `snapshot`: one of its internal snapshots) without
 * taking its lock (-U: a running VM's image reads too, as backups do) and checks it.
 */
export async function verifyWorkload(
  imagePath: string,
  opts: { format?: 'qcow2' | 'raw'; snapshot?: string } = {},
): Promise<WorkloadVerdict> {
  const format = opts.format ?? ((JSON.parse((await exec('qemu-img', ['info', '-U', '--output=json', imagePath])).stdout) as { format: string }).format as 'qcow2' | 'raw');
  const dir = mkdtempSync(path.join(tmpdir(), 'volsnap-workload-'));
  try {
    const out = path.join(dir, 'region.raw');
    if (opts.snapshot) {
      // A snapshot is only readable through convert -l: the whole disk, then the region of it.
      await exec('qemu-img', ['convert', '-U', '-f', format, '-l', `snapshot.name=${opts.snapshot}`, '-O', 'raw', imagePath, out]);
      return checkRegion(readFileSync(out).subarray(WORKLOAD_OFFSET, WORKLOAD_OFFSET + WORKLOAD_BYTES));
    }
    // Only the region: a raw view at its offset over the image.
    const file = imagePath.replaceAll(',', ',,');
    const source = `driver=raw,offset=${WORKLOAD_OFFSET},size=${WORKLOAD_BYTES},file.driver=${format},file.file.driver=file,file.file.filename=${file}`;
    await exec('qemu-img', ['convert', '-U', '--image-opts', source, '-O', 'raw', out]);
    return checkRegion(readFileSync(out));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
