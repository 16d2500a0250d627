/**
 * Which clusters differ between two internal snapshots of one qcow2 image, read from its metadata alone
 * (docs/design.md §14). Internal snapshots share clusters copy-on-write: a guest cluster that nobody wrote
 * between the two snapshots maps to the same host cluster in both, so comparing the two snapshots' L2 entries
 * finds every changed cluster without reading any data (an L2 table both share is skipped whole). A cluster
 * rewritten with the same bytes counts as changed; that costs bytes, never correctness.
 *
 * The snapshots' tables are immutable while they exist; the caller holds the image's lock so that no snapshot
 * is created or deleted (which rewrites the snapshot table and frees clusters) while they are read.
 */
import { open, type FileHandle } from 'node:fs/promises';

export interface ByteRange {
  offset: number;
  length: number;
}

export interface SnapshotDiff {
  clusterSize: number;
  /** The snapshots' disk size (both have the same). */
  diskSize: number;
  /** Guest byte ranges whose clusters differ, in order, adjacent clusters merged. */
  ranges: ByteRange[];
  changedBytes: number;
}

const QCOW_MAGIC = 0x514649fb;
/** Incompatible features that change how L2 entries read: corrupt (1), external data file (2), extended L2 (4). */
const UNSUPPORTED_FEATURES = (1n << 1n) | (1n << 2n) | (1n << 4n);
const OFFSET_MASK = 0x00fffffffffffe00n;
/** The "copied" flag (refcount is 1) differs between a table and its copy without any change of content. */
const COPIED = 1n << 63n;

interface SnapshotEntry {
  name: string;
  l1Offset: number;
  l1Size: number;
  diskSize: number | null;
}

async function readAt(fh: FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
    if (bytesRead === 0) break; // past the end of the file: zeroes, as qcow2 reads them
    done += bytesRead;
  }
  return buf;
}

async function snapshotTable(fh: FileHandle, offset: number, count: number): Promise<SnapshotEntry[]> {
  const out: SnapshotEntry[] = [];
  let pos = offset;
  for (let i = 0; i < count; i++) {
    const h = await readAt(fh, pos, 40);
    const l1Offset = Number(h.readBigUInt64BE(0));
    const l1Size = h.readUInt32BE(8);
    const idSize = h.readUInt16BE(12);
    const nameSize = h.readUInt16BE(14);
    const extraSize = h.readUInt32BE(36);
    const rest = await readAt(fh, pos + 40, extraSize + idSize + nameSize);
    const diskSize = extraSize >= 16 ? Number(rest.readBigUInt64BE(8)) : null;
    const name = rest.subarray(extraSize + idSize, extraSize + idSize + nameSize).toString('utf8');
    out.push({ name, l1Offset, l1Size, diskSize });
    const len = 40 + extraSize + idSize + nameSize;
    pos += len + ((8 - (len % 8)) % 8);
  }
  return out;
}

/**
 * The clusters that differ between snapshots `fromTag` and `toTag` of `file`; null when the image is of a kind
 * this reader does not handle (encrypted, external data file, extended L2, marked corrupt), a tag is missing or
 * not unique, or the two snapshots differ in size: the caller then compares content instead.
 */
export async function diffSnapshots(file: string, fromTag: string, toTag: string): Promise<SnapshotDiff | null> {
  const fh = await open(file, 'r');
  try {
    const hdr = await readAt(fh, 0, 104);
    if (hdr.readUInt32BE(0) !== QCOW_MAGIC) return null;
    const version = hdr.readUInt32BE(4);
    const clusterBits = hdr.readUInt32BE(20);
    const imageSize = Number(hdr.readBigUInt64BE(24));
    if (hdr.readUInt32BE(32) !== 0) return null; // encrypted
    if (version >= 3 && (hdr.readBigUInt64BE(72) & UNSUPPORTED_FEATURES) !== 0n) return null;
    if (clusterBits < 9 || clusterBits > 21) return null;
    const clusterSize = 2 ** clusterBits;
    const snapshots = await snapshotTable(fh, Number(hdr.readBigUInt64BE(64)), hdr.readUInt32BE(60));
    const from = snapshots.filter((s) => s.name === fromTag);
    const to = snapshots.filter((s) => s.name === toTag);
    if (from.length !== 1 || to.length !== 1) return null;
    const a = from[0]!;
    const b = to[0]!;
    const sizeA = a.diskSize ?? imageSize;
    const sizeB = b.diskSize ?? imageSize;
    if (sizeA !== sizeB) return null;
    const l1a = await readAt(fh, a.l1Offset, a.l1Size * 8);
    const l1b = await readAt(fh, b.l1Offset, b.l1Size * 8);
    const l2Entries = clusterSize / 8;
    const clusters = Math.ceil(sizeB / clusterSize);
    const zeroTable = Buffer.alloc(clusterSize);
    const ranges: ByteRange[] = [];
    let changedBytes = 0;
    const mark = (cluster: number): void => {
      const offset = cluster * clusterSize;
      const length = Math.min(clusterSize, sizeB - offset);
      changedBytes += length;
      const last = ranges.at(-1);
      if (last && last.offset + last.length === offset) last.length += length;
      else ranges.push({ offset, length });
    };
    const l1Count = Math.max(a.l1Size, b.l1Size);
    for (let i = 0; i < l1Count && i * l2Entries < clusters; i++) {
      const ea = i < a.l1Size ? l1a.readBigUInt64BE(i * 8) & OFFSET_MASK : 0n;
      const eb = i < b.l1Size ? l1b.readBigUInt64BE(i * 8) & OFFSET_MASK : 0n;
      if (ea === eb) continue; // the same L2 table (or none in either): nothing in its range changed
      const ta = ea === 0n ? zeroTable : await readAt(fh, Number(ea), clusterSize);
      const tb = eb === 0n ? zeroTable : await readAt(fh, Number(eb), clusterSize);
      for (let j = 0; j < l2Entries; j++) {
        const cluster = i * l2Entries + j;
        if (cluster >= clusters) break;
        if ((ta.readBigUInt64BE(j * 8) & ~COPIED) !== (tb.readBigUInt64BE(j * 8) & ~COPIED)) mark(cluster);
      }
    }
    return { clusterSize, diskSize: sizeB, ranges, changedBytes };
  } finally {
    await fh.close();
  }
}
