/**
 * The fault matrix's independent auditor. It knows the database's row shapes (DESIGN.md §3) and the files on disk,
 * nothing else: it never calls the service's code (no db/, storage/, services/ imports), so a bug there cannot
 * hide a broken invariant here. It checks DESIGN.md §12 for the snapshots of one case:
 *
 * - `backedup-has-verified-backup`: a BackedUp snapshot has a Ready Image store ref whose file exists and whose
 *   sha256 matches its checksum.
 * - `backedup-keeps-primary`: a BackedUp snapshot's Primary store ref is not Destroyed and `qemu-img snapshot -l -U`
 *   on its volume still lists the snapshot id as a tag.
 * - `terminal-within-bound`: every snapshot reaches BackedUp or Error (Destroyed once GC cleaned an Error) within
 *   its bound.
 * - `no-stale-allocated`: no Allocated/Creating row older than its bound.
 * - `no-temp-file-after-gc`: after a storage GC run, no temporary backup file (`.partial-`) is left.
 * - `attempts-count-copy-failures`: `backup_attempts` = injected copy failures + 1 for BackedUp, = the failures for
 *   Error.
 * - `outcome`: the case's expected end state, when it has one.
 * - `no-leaked-primary`: a Primary store ref marked Destroyed has no tag left on its volume.
 * - `chain-intact`: a BackedUp delta's parent backup is Ready and its file exists (the restore needs it).
 * - `deleted-leaves-nothing`: a Destroyed snapshot has no tag on its volume and no backup file, unless a backup
 *   that is not Destroyed depends on it.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';

const exec = promisify(execFile);

/** The temporary-file mark of storage/paths.ts (`<final>.partial-<random>`), restated here on purpose. */
export const TEMP_MARK = '.partial-';
export const TERMINAL = ['BackedUp', 'Error', 'Destroyed'] as const;

export interface Violation {
  invariant: string;
  snapshotId?: string;
  detail: string;
}

export interface SnapshotExpectation {
  snapshotId: string;
  /** Copy failures the case injected (each must cost exactly one attempt). */
  copyFailures: number;
  /** The end state the case expects; 'either' when the caller was never told "created"; Destroyed: deleted. */
  outcome: 'BackedUp' | 'Error' | 'either' | 'Destroyed';
}

interface SnapshotRow {
  id: string;
  volume_id: string;
  account_id: string;
  status: string;
  backup_attempts: number;
  last_error: string | null;
  created: Date;
  volume_path: string;
}
interface RefRow {
  snapshot_id: string;
  store_role: 'Primary' | 'Image';
  store_id: string;
  install_path: string;
  state: string;
  checksum: string | null;
  parent_snapshot_id: string | null;
}

async function sha256Hex(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Snapshot tags of a qcow2 image, read without its lock (-U); null if qemu-img cannot read it. */
export async function qcowTags(image: string): Promise<string[] | null> {
  try {
    const { stdout } = await exec('qemu-img', ['snapshot', '-l', '-U', image]);
    // "ID  TAG  VM SIZE  DATE  VM CLOCK  ICOUNT" then one row per snapshot.
    return stdout
      .split('\n')
      .slice(2)
      .map((l) => l.trim().split(/\s+/)[1])
      .filter((t): t is string => !!t);
  } catch {
    return null;
  }
}

async function walk(dir: string): Promise<string[]> {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await walk(p)));
    else out.push(p);
  }
  return out;
}

export class Auditor {
  readonly pool: pg.Pool;
  constructor(databaseUrl: string) {
    this.pool = new pg.Pool({ connectionString: databaseUrl, max: 3 });
    this.pool.on('error', () => undefined);
  }

  async close(): Promise<void> {
    await this.pool.end().catch(() => undefined);
  }

  async snapshots(ids: string[]): Promise<SnapshotRow[]> {
    const { rows } = await this.pool.query<SnapshotRow>(
      `SELECT s.id, s.volume_id, s.account_id, s.status, s.backup_attempts, s.last_error, s.created, v.path AS volume_path
         FROM snapshots s JOIN volumes v ON v.id = s.volume_id WHERE s.id = ANY($1::uuid[])`,
      [ids],
    );
    return rows;
  }

  /** Snapshot ids of a volume (a case may create one the caller never heard of). */
  async snapshotIdsOfVolume(volumeId: string): Promise<string[]> {
    const { rows } = await this.pool.query<{ id: string }>('SELECT id FROM snapshots WHERE volume_id = $1', [volumeId]);
    return rows.map((r) => r.id);
  }

  async imageStoreRoots(): Promise<Map<string, string>> {
    const { rows } = await this.pool.query<{ id: string; path: string }>('SELECT id, path FROM image_stores');
    return new Map(rows.map((r) => [r.id, r.path]));
  }

  /**
   * Waits until every snapshot is terminal or past `deadline`; `kick` runs (storage GC, the reconciler) when a
   * row has stayed in flight for longer than `kickAfterMs` — an orphaned Allocated row is GC's to end.
   */
  async waitTerminal(ids: string[], deadline: number, kick?: () => Promise<unknown>, kickAfterMs = 65_000): Promise<void> {
    let lastKick = 0;
    for (;;) {
      const rows = await this.snapshots(ids).catch(() => null);
      if (rows && rows.every((r) => (TERMINAL as readonly string[]).includes(r.status))) return;
      if (Date.now() > deadline) return;
      const old = rows?.some((r) => !(TERMINAL as readonly string[]).includes(r.status) && Date.now() - r.created.getTime() > kickAfterMs);
      if (kick && old && Date.now() - lastKick > 10_000) {
        lastKick = Date.now();
        await kick().catch(() => undefined);
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  }

  /**
   * Checks the invariants for the case's snapshots (and every other snapshot of the same volumes). `gcRan` says
   * a storage GC run finished after the snapshots ended (the temporary-file check applies only then).
   */
  async audit(opts: {
    expectations: SnapshotExpectation[];
    volumeIds: string[];
    gcRan: boolean;
    /** Seconds an Allocated/Creating row may live (the GC reconciler's grace + one run). */
    inFlightBoundSeconds: number;
  }): Promise<Violation[]> {
    const v: Violation[] = [];
    const expected = new Map(opts.expectations.map((e) => [e.snapshotId, e]));
    const ids = new Set(opts.expectations.map((e) => e.snapshotId));
    for (const vol of opts.volumeIds) for (const id of await this.snapshotIdsOfVolume(vol)) ids.add(id);
    const rows = await this.snapshots([...ids]);
    const { rows: refs } = await this.pool.query<RefRow>(
      'SELECT snapshot_id, store_role, store_id, install_path, state, checksum, parent_snapshot_id FROM snapshot_store_ref WHERE snapshot_id = ANY($1::uuid[])',
      [[...ids]],
    );
    const stores = await this.imageStoreRoots();
    const tagsByVolume = new Map<string, string[] | null>();
    const tagsOf = async (path: string) => {
      if (!tagsByVolume.has(path)) tagsByVolume.set(path, await qcowTags(path));
      return tagsByVolume.get(path)!;
    };

    for (const id of ids) if (!rows.some((r) => r.id === id)) v.push({ invariant: 'terminal-within-bound', snapshotId: id, detail: 'row is missing' });
    for (const s of rows) {
      const mine = refs.filter((r) => r.snapshot_id === s.id);
      const image = mine.find((r) => r.store_role === 'Image');
      const primary = mine.find((r) => r.store_role === 'Primary');
      const ageS = (Date.now() - s.created.getTime()) / 1000;

      if (!(TERMINAL as readonly string[]).includes(s.status)) {
        v.push({ invariant: 'terminal-within-bound', snapshotId: s.id, detail: `still ${s.status} after ${ageS.toFixed(0)} s` });
      }
      if ((s.status === 'Allocated' || s.status === 'Creating') && ageS > opts.inFlightBoundSeconds) {
        v.push({ invariant: 'no-stale-allocated', snapshotId: s.id, detail: `${s.status} for ${ageS.toFixed(0)} s (bound ${opts.inFlightBoundSeconds} s)` });
      }

      if (s.status === 'BackedUp') {
        const root = image && stores.get(image.store_id);
        if (!image || image.state !== 'Ready' || !image.checksum || !root) {
          v.push({ invariant: 'backedup-has-verified-backup', snapshotId: s.id, detail: `no Ready Image ref with a checksum (ref: ${image ? image.state : 'none'})` });
        } else {
          const file = join(root, image.install_path);
          if (!existsSync(file)) {
            v.push({ invariant: 'backedup-has-verified-backup', snapshotId: s.id, detail: `backup file missing: ${file}` });
          } else {
            const hex = await sha256Hex(file);
            if (image.checksum.replace(/^sha256:/, '') !== hex) {
              v.push({ invariant: 'backedup-has-verified-backup', snapshotId: s.id, detail: `sha256 ${hex} != recorded ${image.checksum}` });
            }
          }
        }
        if (!primary || primary.state === 'Destroyed') {
          v.push({ invariant: 'backedup-keeps-primary', snapshotId: s.id, detail: `Primary ref ${primary ? primary.state : 'missing'}` });
        }
        const tags = await tagsOf(s.volume_path);
        if (!tags || !tags.includes(s.id)) {
          v.push({ invariant: 'backedup-keeps-primary', snapshotId: s.id, detail: tags ? 'snapshot tag missing on the volume' : `qemu-img cannot read ${s.volume_path}` });
        }
      }
      if (primary?.state === 'Destroyed' && existsSync(s.volume_path)) {
        const tags = await tagsOf(s.volume_path);
        if (tags?.includes(s.id)) v.push({ invariant: 'no-leaked-primary', snapshotId: s.id, detail: 'Primary ref Destroyed but the tag is still on the volume' });
      }

      if (s.status === 'BackedUp' && image?.parent_snapshot_id) {
        const parent = refs.find((r) => r.snapshot_id === image.parent_snapshot_id && r.store_role === 'Image');
        const root = parent && stores.get(parent.store_id);
        if (!parent || parent.state !== 'Ready' || !root || !existsSync(join(root, parent.install_path))) {
          v.push({ invariant: 'chain-intact', snapshotId: s.id, detail: `parent ${image.parent_snapshot_id}: ref ${parent?.state ?? 'missing'}` });
        }
      }
      if (s.status === 'Destroyed') {
        const tags = existsSync(s.volume_path) ? await tagsOf(s.volume_path) : [];
        if (tags?.includes(s.id)) v.push({ invariant: 'deleted-leaves-nothing', snapshotId: s.id, detail: 'its tag is still on the volume' });
        const needed = refs.some((r) => r.parent_snapshot_id === s.id && r.store_role === 'Image' && r.state !== 'Destroyed');
        for (const root of stores.values()) {
          const file = join(root, 'snapshots', s.account_id, s.volume_id, `${s.id}.qcow2`);
          if (!needed && existsSync(file)) v.push({ invariant: 'deleted-leaves-nothing', snapshotId: s.id, detail: `backup file left: ${file}` });
        }
      }

      const e = expected.get(s.id);
      if (e && (TERMINAL as readonly string[]).includes(s.status)) {
        const ok = s.status === 'BackedUp' ? 'BackedUp' : s.status === 'Destroyed' && e.outcome === 'Destroyed' ? 'Destroyed' : 'Error';
        if (e.outcome !== 'either' && e.outcome !== ok) {
          v.push({ invariant: 'outcome', snapshotId: s.id, detail: `expected ${e.outcome}, got ${s.status}${s.last_error ? ` (${s.last_error})` : ''}` });
        }
        // A deleted snapshot was BackedUp first.
        const want = ok === 'Error' ? e.copyFailures : e.copyFailures + 1;
        if (s.backup_attempts !== want) {
          v.push({ invariant: 'attempts-count-copy-failures', snapshotId: s.id, detail: `backup_attempts ${s.backup_attempts}, expected ${want} (${e.copyFailures} injected failure(s), ${s.status})` });
        }
      }
    }

    if (opts.gcRan) {
      for (const s of rows) {
        for (const root of stores.values()) {
          const dir = join(root, 'snapshots', s.account_id, s.volume_id);
          for (const f of await walk(dir)) {
            if (f.includes(TEMP_MARK)) v.push({ invariant: 'no-temp-file-after-gc', snapshotId: s.id, detail: f });
          }
        }
      }
    }
    // One violation per invariant and snapshot is enough to read.
    const seen = new Set<string>();
    return v.filter((x) => {
      const k = `${x.invariant}/${x.snapshotId}/${x.detail}`;
      return seen.has(k) ? false : (seen.add(k), true);
    });
  }
}
