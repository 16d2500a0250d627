/**
 * Concurrency soak: several actors fire random snapshots (async and sync) and VM/volume operations at a few VMs
 * through the HTTP API (the Hono app in process, over a real stack: Temporal dev server, embedded PostgreSQL,
 * qcow2 images through qemu-img), while a chaos loop takes the image store away now and then so some backups
 * fail and are compensated. Then an auditor replays the `events` table and proves that
 *   - no forbidden operation ran while a backup of the affected volume was in flight (rules written here from
 *     docs/design.md §6, not taken from domain/policy.ts, so that a wrong policy table is caught too),
 *   - no refusal was spurious (each 409 OPERATION_NOT_ALLOWED_DURING_BACKUP names a snapshot in flight then),
 *   - every snapshot settled (BackedUp, Error or Destroyed), and storage matches the rows after storage GC:
 *     BackedUp ⇒ Image ref Ready and the backup file has that checksum; Error/Destroyed ⇒ no primary snapshot,
 *     no backup file; no temporary file anywhere in the image store.
 *
 *   npm run soak                        # 3 minutes, 6 VMs, 4 actors
 *   npm run soak -- --quick             # ≤ 60 s (what test/integration/soak.test.ts runs)
 *   npm run soak -- --seed 7 --duration 120 --vms 4 --actors 3
 *
 * The seed fixes each actor's sequence of operation kinds and random picks; which VM or volume a pick lands on
 * also depends on the state at that moment (actors run concurrently), so two runs with one seed are alike, not
 * identical. Every request and its answer is in the report, with the seed.
 */
import { sha256File as sha256Hex } from '../storage/common.js';
import { execFile } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { promisify } from 'node:util';
import { createApp } from '../api/app.js';
import { updateSetting } from '../db/settings.js';
import { silentLogger } from '../observability/logger.js';
import { installTemporalRuntime } from '../app/runtime.js';
import { startTestStack, type TestStack } from '../harness/stack.js';

const exec = promisify(execFile);
const MiB = 1024 * 1024;
const ADMIN_KEY = 'soak-admin-key';

// ---------------------------------------------------------------------------------------------------------------
// Options

export interface SoakOptions {
  seed: number;
  /** How long the actors fire operations (ms). */
  durationMs: number;
  vms: number;
  actors: number;
  /** Break the image store for this long every `outageEveryMs` (0: never). */
  outageMs: number;
  outageEveryMs: number;
  /** Backup copy rate cap, so backups last long enough to overlap with other operations. */
  backupRateBytesPerSec: number;
  /** How long to wait after the workload for every snapshot to reach BackedUp or Error. */
  settleTimeoutMs: number;
  log: (msg: string) => void;
}

export const QUICK: Omit<SoakOptions, 'seed' | 'log'> = {
  durationMs: 22_000,
  vms: 3,
  actors: 3,
  outageMs: 2_500,
  outageEveryMs: 8_000,
  backupRateBytesPerSec: 12 * MiB,
  settleTimeoutMs: 45_000,
};

export const FULL: Omit<SoakOptions, 'seed' | 'log'> = {
  durationMs: 180_000,
  vms: 6,
  actors: 4,
  outageMs: 2_500,
  outageEveryMs: 15_000,
  backupRateBytesPerSec: 12 * MiB,
  settleTimeoutMs: 120_000,
};

// ---------------------------------------------------------------------------------------------------------------
// A seeded PRNG (mulberry32)

export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const pick = <T>(rnd: () => number, xs: readonly T[]): T | undefined => (xs.length ? xs[Math.floor(rnd() * xs.length)] : undefined);

function weighted<K extends string>(rnd: () => number, weights: Record<K, number>): K {
  const entries = Object.entries(weights) as Array<[K, number]>;
  let r = rnd() * entries.reduce((n, [, w]) => n + w, 0);
  for (const [k, w] of entries) {
    r -= w;
    if (r < 0) return k;
  }
  return entries[entries.length - 1]![0];
}

// ---------------------------------------------------------------------------------------------------------------
// The auditor: pure, over rows of the `events` table

export interface AuditEvent {
  id: number;
  type: string;
  resourceType: string;
  resourceId: string;
  details: Record<string, any>;
  created: Date;
}

export interface Violation {
  eventId: number;
  snapshotId: string;
  volumeId: string;
  message: string;
}

export interface AuditResult {
  /** Snapshots with a complete in-flight interval. */
  intervals: number;
  /** Snapshots whose request never reached BackedUp or Error. */
  unsettled: string[];
  /** VM/volume operation events that ran inside an in-flight interval of their VM/volume (all allowed ones). */
  opsDuringBackup: Record<string, number>;
  violations: Violation[];
}

type VolumeType = 'ROOT' | 'DATADISK';

/**
 * Which VM operations may run on VM M while a snapshot of its volume V (type T) is in flight, by event type
 * (docs/design.md §6, written out again here on purpose). `true`: always; `false`: never; a function decides.
 */
const VM_EVENT_RULES: Record<string, boolean | ((t: VolumeType, e: AuditEvent, v: string) => boolean)> = {
  'VM.START': true,
  'VM.STOP': true,
  'VM.REBOOT': true,
  'ISO.ATTACH': true,
  'VOLUME.ATTACH': true,
  'VM.UPGRADE': true,
  'VM.DESTROY': (t) => t === 'DATADISK',
  'VM.RESTORE': (t) => t === 'DATADISK',
  'VOLUME.DETACH': (_t, e, v) => e.details.volumeId !== v,
  'ISO.DETACH': false,
  'VM.MIGRATE': false,
};
/** Operations on V itself: none of these may run while V backs up. */
const FORBIDDEN_ON_VOLUME = new Set(['VOLUME.RESIZE', 'VOLUME.MIGRATE', 'VOLUME.DELETE']);
const SETTLED = new Set(['BackedUp', 'Error']);

/**
 * Replays the events in id order. Conflicting operations take the same row locks (VM, then volume) and write
 * their event inside the locked transaction, so for any two that touch the same VM or volume the id order is
 * the order in which they ran. A snapshot is in flight from its request event (SNAPSHOT.CREATE without `to`,
 * written with the Allocated row) to its transition to BackedUp or Error; the VM it affects is the one its
 * volume is attached to at the moment of the operation (replayed from the attach/detach/destroy/reinstall events).
 */
export function auditEvents(events: readonly AuditEvent[], volumeTypes: ReadonlyMap<string, VolumeType>): AuditResult {
  const sorted = [...events].sort((a, b) => a.id - b.id);
  const attachedTo = new Map<string, string | null>();
  /** snapshotId → volumeId, for the snapshots in flight right now (in replay order). */
  const inFlight = new Map<string, string>();
  const requested = new Set<string>();
  const settled = new Set<string>();
  const violations: Violation[] = [];
  const opsDuringBackup: Record<string, number> = {};
  const flag = (e: AuditEvent, snapshotId: string, volumeId: string, why: string) =>
    violations.push({ eventId: e.id, snapshotId, volumeId, message: `event ${e.id} ${e.type} on ${e.resourceType} ${e.resourceId}: ${why}` });

  for (const e of sorted) {
    const d = e.details ?? {};
    // 1. Judge the operation against every snapshot in flight before it.
    if (e.resourceType === 'VirtualMachine' && e.type in VM_EVENT_RULES) {
      for (const [snapshotId, volumeId] of inFlight) {
        if (attachedTo.get(volumeId) !== e.resourceId) continue;
        const rule = VM_EVENT_RULES[e.type]!;
        const type = volumeTypes.get(volumeId);
        if (!type) {
          flag(e, snapshotId, volumeId, `type of volume ${volumeId} unknown`);
          continue;
        }
        const allowed = typeof rule === 'function' ? rule(type, e, volumeId) : rule;
        if (!allowed) flag(e, snapshotId, volumeId, `ran on VM ${e.resourceId} while snapshot ${snapshotId} of its ${type} volume ${volumeId} was in flight`);
        else opsDuringBackup[e.type] = (opsDuringBackup[e.type] ?? 0) + 1;
      }
    }
    if (e.resourceType === 'Volume' && FORBIDDEN_ON_VOLUME.has(e.type)) {
      for (const [snapshotId, volumeId] of inFlight) {
        if (volumeId === e.resourceId) flag(e, snapshotId, volumeId, `ran on volume ${volumeId} while its snapshot ${snapshotId} was in flight`);
      }
    }
    if (e.type === 'SNAPSHOT.REVERT') {
      for (const [snapshotId, volumeId] of inFlight) {
        if (d.volumeId === volumeId || e.resourceId === snapshotId) flag(e, snapshotId, volumeId, `revert while snapshot ${snapshotId} of volume ${volumeId} was in flight`);
      }
    }
    if (e.type === 'SNAPSHOT.DELETE' && inFlight.has(e.resourceId) && (d.to === 'Destroying' || d.to === 'Destroyed')) {
      flag(e, e.resourceId, inFlight.get(e.resourceId)!, 'the snapshot was deleted while in flight');
    }

    // 2. Then apply its effect on the replayed state.
    if (e.resourceType === 'Snapshot') {
      if (e.type === 'SNAPSHOT.CREATE' && !('to' in d) && typeof d.volumeId === 'string') {
        requested.add(e.resourceId);
        inFlight.set(e.resourceId, d.volumeId);
      } else if (typeof d.to === 'string' && SETTLED.has(d.to) && inFlight.has(e.resourceId)) {
        inFlight.delete(e.resourceId);
        settled.add(e.resourceId);
      }
    }
    switch (e.type) {
      case 'VOLUME.CREATE':
        if (e.resourceType === 'Volume') attachedTo.set(e.resourceId, typeof d.vmId === 'string' ? d.vmId : null);
        break;
      case 'VOLUME.ATTACH':
        attachedTo.set(d.volumeId, e.resourceId);
        break;
      case 'VOLUME.DETACH':
        attachedTo.set(d.volumeId, null);
        break;
      case 'VM.DESTROY':
        for (const v of (d.detachedVolumeIds ?? []) as string[]) attachedTo.set(v, null);
        for (const v of (d.destroyedVolumeIds ?? []) as string[]) attachedTo.set(v, null);
        break;
      case 'VM.RESTORE':
        if (d.oldVolumeId) attachedTo.set(d.oldVolumeId, null);
        if (d.volumeId) attachedTo.set(d.volumeId, e.resourceId);
        break;
      case 'VOLUME.DELETE':
        attachedTo.set(e.resourceId, null);
        break;
    }
  }
  return {
    intervals: settled.size,
    unsettled: [...requested].filter((id) => !settled.has(id)),
    opsDuringBackup,
    violations,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// The workload

export interface RequestRecord {
  actor: number;
  op: string;
  target: string;
  status: number;
  code: string | null;
  snapshotId: string | null;
  startedAt: number;
  endedAt: number;
}

interface Api {
  call<T = any>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }>;
}

function inProcessApi(app: ReturnType<typeof createApp>): Api {
  return {
    async call(method, path, body) {
      const headers: Record<string, string> = { authorization: `Bearer ${ADMIN_KEY}` };
      if (body !== undefined) headers['content-type'] = 'application/json';
      const res = await app.request(path, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
      const text = await res.text();
      let parsed: any = text;
      try {
        parsed = text ? JSON.parse(text) : undefined;
      } catch {
        // not JSON
      }
      return { status: res.status, body: parsed };
    },
  };
}

const OP_WEIGHTS = {
  'snapshot-async': 14,
  'snapshot-sync': 4,
  start: 5,
  stop: 5,
  reboot: 4,
  destroy: 2,
  reinstall: 3,
  'attach-iso': 4,
  'detach-iso': 4,
  'attach-volume': 4,
  'detach-volume': 4,
  'change-service-offering': 4,
  migrate: 4,
  'resize-volume': 4,
  'migrate-volume': 3,
  'delete-volume': 2,
  'delete-snapshot': 4,
  'create-vm': 2,
  'create-volume': 2,
} as const;
type Op = keyof typeof OP_WEIGHTS;

interface World {
  vms: any[];
  volumes: any[];
  snapshots: any[];
}

const IN_PROGRESS = new Set(['Allocated', 'Creating', 'CreatedOnPrimary', 'BackingUp']);

async function look(api: Api): Promise<World> {
  const [vms, volumes, snapshots] = await Promise.all([
    api.call<any[]>('GET', '/api/v1/vms'),
    api.call<any[]>('GET', '/api/v1/volumes'),
    api.call<any[]>('GET', '/api/v1/snapshots'),
  ]);
  return { vms: vms.body ?? [], volumes: volumes.body ?? [], snapshots: snapshots.body ?? [] };
}

interface Catalog {
  isoIds: string[];
  hostIds: string[];
  offeringIds: string[];
  poolIds: string[];
}

/** One operation, chosen by `rnd` over the world as it is now; half the time aimed at something backing up. */
async function act(api: Api, rnd: () => number, catalog: Catalog, maxVms: number, seq: { n: number }): Promise<Omit<RequestRecord, 'actor' | 'startedAt' | 'endedAt'> | null> {
  const op = weighted<Op>(rnd, OP_WEIGHTS);
  const w = await look(api);
  const busyVolumes = new Set(w.snapshots.filter((s) => IN_PROGRESS.has(s.state)).map((s) => s.volumeId));
  const liveVms = w.vms.filter((v) => v.state !== 'Destroyed');
  const busyVms = liveVms.filter((vm) => vm.volumes.some((v: any) => busyVolumes.has(v.id)));
  const aimAtBusy = rnd() < 0.5;
  const vm = (aimAtBusy && busyVms.length ? pick(rnd, busyVms) : pick(rnd, liveVms)) as any;
  const liveVolumes = w.volumes.filter((v) => v.state === 'Ready');
  const busyVols = liveVolumes.filter((v) => busyVolumes.has(v.id));
  const volume = (aimAtBusy && busyVols.length ? pick(rnd, busyVols) : pick(rnd, liveVolumes)) as any;
  const detached = liveVolumes.filter((v) => v.vmId === null && v.type === 'DATADISK');
  const record = async (target: string, method: string, path: string, body?: unknown) => {
    const res = await api.call(method, path, body);
    const err = res.body?.error;
    return { op, target, status: res.status, code: err?.code ?? null, snapshotId: err?.details?.snapshotId ?? null };
  };
  const vmAction = (body: Record<string, unknown>) => (vm ? record(vm.id, 'POST', `/api/v1/vms/${vm.id}/actions`, body) : null);

  switch (op) {
    case 'snapshot-async':
    case 'snapshot-sync':
      return volume ? record(volume.id, 'POST', `/api/v1/volumes/${volume.id}/snapshots`, { asyncBackup: op === 'snapshot-async' }) : null;
    case 'start':
    case 'stop':
    case 'reboot':
    case 'destroy':
    case 'reinstall':
    case 'detach-iso':
      // Keep a few VMs alive: destroy only while there are more than half the starting number.
      if (op === 'destroy' && liveVms.length <= Math.ceil(maxVms / 2)) return null;
      return vmAction({ action: op });
    case 'attach-iso':
      return vmAction({ action: op, isoId: pick(rnd, catalog.isoIds) });
    case 'change-service-offering':
      return vmAction({ action: op, serviceOfferingId: pick(rnd, catalog.offeringIds) });
    case 'migrate':
      return vmAction({ action: op, hostId: pick(rnd, catalog.hostIds.filter((h) => h !== vm?.hostId)) ?? catalog.hostIds[0] });
    case 'attach-volume': {
      const v = pick(rnd, detached);
      return v ? vmAction({ action: op, volumeId: v.id }) : null;
    }
    case 'detach-volume': {
      const disks = (vm?.volumes ?? []).filter((v: any) => v.type === 'DATADISK');
      const busy = disks.filter((v: any) => busyVolumes.has(v.id));
      const v = (aimAtBusy && busy.length ? pick(rnd, busy) : pick(rnd, disks)) as any;
      return v ? vmAction({ action: op, volumeId: v.id }) : null;
    }
    case 'resize-volume':
      // Grow by 1 MiB: small sizes keep qemu-img fast (shrinking a huge image takes minutes).
      return volume ? record(volume.id, 'POST', `/api/v1/volumes/${volume.id}/resize`, { sizeBytes: volume.sizeBytes + MiB }) : null;
    case 'migrate-volume': {
      const pool = pick(rnd, catalog.poolIds.filter((p) => p !== volume?.poolId));
      return volume && pool ? record(volume.id, 'POST', `/api/v1/volumes/${volume.id}/migrate`, { poolId: pool }) : null;
    }
    case 'delete-volume': {
      const v = (aimAtBusy && busyVols.length ? pick(rnd, busyVols) : pick(rnd, detached)) as any;
      return v ? record(v.id, 'DELETE', `/api/v1/volumes/${v.id}`) : null;
    }
    case 'delete-snapshot': {
      const busy = w.snapshots.filter((s) => IN_PROGRESS.has(s.state));
      const s = (aimAtBusy && busy.length ? pick(rnd, busy) : pick(rnd, w.snapshots)) as any;
      return s ? record(s.id, 'DELETE', `/api/v1/snapshots/${s.id}`) : null;
    }
    case 'create-vm':
      if (liveVms.length >= maxVms) return null;
      return record('-', 'POST', '/api/v1/vms', {
        name: `soak-vm-x${seq.n++}`,
        hypervisor: 'KVM',
        rootDiskSizeBytes: 32 * MiB,
        dataDisks: [{ sizeBytes: 16 * MiB }],
      });
    case 'create-volume':
      if (detached.length >= maxVms) return null;
      return record('-', 'POST', '/api/v1/volumes', { name: `soak-vol-x${seq.n++}`, sizeBytes: 16 * MiB });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Storage consistency

/** `sha256:<hex>` of a file, as store refs record it. */
async function sha256File(path: string): Promise<string> {
  return `sha256:${await sha256Hex(path)}`;
}

function walk(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { withFileTypes: true }).flatMap((d) => (d.isDirectory() ? walk(join(dir, d.name)) : [join(dir, d.name)]));
}

async function checkStorage(stack: TestStack, storePath: string): Promise<{ problems: string[]; finalStates: Record<string, number> }> {
  const problems: string[] = [];
  const driver = stack.drivers.KVM!;
  const { rows: snaps } = await stack.pool.query(
    `SELECT s.id, s.status, s.account_id, s.volume_id, v.path AS volume_path, v.removed AS volume_removed
       FROM snapshots s JOIN volumes v ON v.id = s.volume_id`,
  );
  // Backups later deltas are built on (docs/design.md §14): kept, with their Image ref, after their snapshot is
  // deleted, until nothing depends on them.
  const { rows: parents } = await stack.pool.query(
    `SELECT DISTINCT parent_snapshot_id AS id FROM snapshot_store_ref
      WHERE store_role = 'Image' AND state <> 'Destroyed' AND parent_snapshot_id IS NOT NULL`,
  );
  const dependedOn = new Set(parents.map((r) => r.id as string));
  const finalStates: Record<string, number> = {};
  for (const s of snaps) {
    finalStates[s.status] = (finalStates[s.status] ?? 0) + 1;
    const { rows: refs } = await stack.pool.query('SELECT store_role, state, install_path, checksum FROM snapshot_store_ref WHERE snapshot_id = $1', [s.id]);
    const image = refs.find((r) => r.store_role === 'Image');
    const primary = refs.find((r) => r.store_role === 'Primary');
    const volumeFile = existsSync(s.volume_path) ? s.volume_path : null;
    const onPrimary = volumeFile ? await driver.hasSnapshot(volumeFile, s.id) : false;
    const backupFile = join(storePath, 'snapshots', s.account_id, s.volume_id, `${s.id}.qcow2`);
    if (IN_PROGRESS.has(s.status)) problems.push(`snapshot ${s.id} still ${s.status}`);
    if (s.status === 'BackedUp') {
      if (image?.state !== 'Ready') problems.push(`BackedUp snapshot ${s.id}: Image ref ${image?.state ?? 'missing'}`);
      else if (!existsSync(join(storePath, image.install_path))) problems.push(`BackedUp snapshot ${s.id}: backup file ${image.install_path} missing`);
      else if ((await sha256File(join(storePath, image.install_path))) !== image.checksum) problems.push(`BackedUp snapshot ${s.id}: backup checksum differs from its ref`);
      if (primary?.state === 'Ready' && !onPrimary) problems.push(`BackedUp snapshot ${s.id}: Primary ref Ready but no snapshot in ${s.volume_path}`);
      if (primary?.state !== 'Ready' && onPrimary) problems.push(`BackedUp snapshot ${s.id}: snapshot left in ${s.volume_path} with Primary ref ${primary?.state ?? 'missing'}`);
    }
    if (s.status === 'Error' || s.status === 'Destroyed') {
      if (onPrimary) problems.push(`${s.status} snapshot ${s.id}: primary snapshot left in ${s.volume_path}`);
      const kept = dependedOn.has(s.id);
      if (existsSync(backupFile) && !kept) problems.push(`${s.status} snapshot ${s.id}: backup file left at ${backupFile}`);
      if (refs.some((r) => r.state === 'Ready' && !(kept && r.store_role === 'Image'))) problems.push(`${s.status} snapshot ${s.id}: a store ref is still Ready`);
      if (kept && !existsSync(backupFile)) problems.push(`${s.status} snapshot ${s.id}: a later delta depends on its backup, which is gone`);
    }
  }
  for (const f of walk(join(storePath, 'snapshots'))) {
    if (!/\/[0-9a-f-]{36}\.qcow2$/.test(f)) problems.push(`unexpected file in the image store: ${relative(storePath, f)}`);
  }
  return { problems, finalStates };
}

// ---------------------------------------------------------------------------------------------------------------
// The run

export interface SoakReport {
  seed: number;
  options: Omit<SoakOptions, 'log'>;
  requests: number;
  outcomes: Record<string, Record<string, number>>;
  serverErrors: RequestRecord[];
  /** Refusals naming a snapshot that was not in flight during the request. */
  spuriousRefusals: RequestRecord[];
  refusalsDuringBackup: number;
  outages: number;
  audit: AuditResult;
  storageProblems: string[];
  /** Snapshots still in flight when the settle wait ran out, with their workflow's status. */
  stuck: string[];
  finalStates: Record<string, number>;
  gc: { destroyed: number; orphanFiles: number; failures: unknown[]; orphans: Array<{ path: string; reason: string; snapshotId: string; history: string[] }> };
  elapsedSeconds: number;
  ok: boolean;
}

/** Stacks of runs still going, so a test that timed out can still stop PostgreSQL and the Temporal server. */
const running = new Set<() => Promise<void>>();

/** Stops the stacks of soak runs that have not finished (for a test's afterAll). */
export async function stopRunningSoaks(): Promise<void> {
  await Promise.all([...running].map((stop) => stop()));
}

export async function runSoak(opts: SoakOptions): Promise<SoakReport> {
  const started = Date.now();
  const log = opts.log;
  installTemporalRuntime(silentLogger);
  const dataDir = mkdtempSync(join(tmpdir(), 'volsnap-soak-'));
  chmodSync(dataDir, 0o755);
  const stack = await startTestStack({
    dataDir,
    env: { ADMIN_API_KEY: ADMIN_KEY, BACKUP_RATE_LIMIT_BYTES_PER_SEC: String(opts.backupRateBytesPerSec) },
  });
  log(`stack up in ${((Date.now() - started) / 1000).toFixed(1)} s (seed ${opts.seed})`);
  let stopped: Promise<void> | undefined;
  const stopStack = () => (stopped ??= stack.stop().finally(() => rmSync(dataDir, { recursive: true, force: true })));
  running.add(stopStack);
  // Ctrl-C: stop PostgreSQL and the Temporal dev server (children of the stack) before leaving.
  const interrupted = (signal: NodeJS.Signals) => {
    log(`${signal}: stopping the stack`);
    void stopStack().finally(() => process.exit(130));
  };
  process.once('SIGINT', interrupted);
  process.once('SIGTERM', interrupted);
  try {
    // One key drives the whole soak: the per-key rate limit (docs/security.md) is not what it tests.
    const app = createApp(stack, { limits: { ratePerMinute: 0 } });
    const api = inProcessApi(app);
    const storePath: string = (await stack.pool.query('SELECT path FROM image_stores ORDER BY created LIMIT 1')).rows[0].path;
    await updateSetting(stack.pool, 'backup.max.attempts', 2);
    await updateSetting(stack.pool, 'backup.retry.interval', 1);

    const ids = async (path: string) => ((await api.call<any[]>('GET', path)).body ?? []).map((x: any) => x.id as string);
    const pools = (await api.call<any[]>('GET', '/api/v1/storage-pools')).body.filter((p: any) => p.hypervisor === 'KVM');
    const catalog: Catalog = {
      isoIds: await ids('/api/v1/isos'),
      hostIds: (await api.call<any[]>('GET', '/api/v1/hosts')).body.filter((h: any) => h.hypervisor === 'KVM').map((h: any) => h.id),
      offeringIds: await ids('/api/v1/service-offerings'),
      poolIds: pools.map((p: any) => p.id),
    };

    // VMs with a ROOT and a data disk, and some data in each so that backups take a while.
    for (let i = 0; i < opts.vms; i++) {
      const res = await api.call('POST', '/api/v1/vms', { name: `soak-vm-${i}`, hypervisor: 'KVM', rootDiskSizeBytes: 32 * MiB, dataDisks: [{ sizeBytes: 16 * MiB }] });
      if (res.status !== 201) throw new Error(`creating a VM: ${res.status} ${JSON.stringify(res.body)}`);
      for (const v of res.body.volumes) {
        await exec('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x${(0x10 + i).toString(16)} 0 ${v.type === 'ROOT' ? 12 : 6}M`, v.path]);
      }
    }
    for (let i = 0; i < Math.max(1, Math.floor(opts.vms / 2)); i++) {
      await api.call('POST', '/api/v1/volumes', { name: `soak-loose-${i}`, sizeBytes: 16 * MiB });
    }
    log(`${opts.vms} VMs and their disks ready; ${opts.actors} actors for ${opts.durationMs / 1000} s`);

    const records: RequestRecord[] = [];
    const deadline = Date.now() + opts.durationMs;
    const seq = { n: 0 };
    const actor = async (index: number) => {
      const rnd = prng(opts.seed * 1000 + index);
      while (Date.now() < deadline) {
        const startedAt = Date.now();
        const r = await act(api, rnd, catalog, opts.vms, seq);
        if (r) records.push({ actor: index, ...r, startedAt, endedAt: Date.now() });
        // A short, seeded pause between operations.
        await new Promise((res) => setTimeout(res, Math.floor(rnd() * 150)));
      }
    };
    let outages = 0;
    const outageWindows: Array<{ from: number; to: number }> = [];
    const chaos = async () => {
      if (!opts.outageMs || !opts.outageEveryMs) return;
      const rnd = prng(opts.seed ^ 0x5eed);
      const blocker = join(dataDir, 'image-store-outage');
      writeFileSync(blocker, 'the image store is away\n');
      for (;;) {
        const wait = opts.outageEveryMs * (0.5 + rnd());
        if (Date.now() + wait + opts.outageMs > deadline) return;
        await new Promise((res) => setTimeout(res, wait));
        const from = Date.now();
        await stack.pool.query('UPDATE image_stores SET path = $1', [join(blocker, 'x')]);
        outages++;
        await new Promise((res) => setTimeout(res, opts.outageMs));
        await stack.pool.query('UPDATE image_stores SET path = $1', [storePath]);
        outageWindows.push({ from, to: Date.now() });
      }
    };
    await Promise.all([...Array.from({ length: opts.actors }, (_, i) => actor(i)), chaos()]);
    await stack.pool.query('UPDATE image_stores SET path = $1', [storePath]);
    log(`${records.length} requests; waiting for every snapshot to settle`);

    const settleStarted = Date.now();
    const stuck: string[] = [];
    for (;;) {
      const { rows } = await stack.pool.query(
        `SELECT id, status, workflow_id, backup_attempts, updated FROM snapshots WHERE status = ANY($1::text[]) ORDER BY created`,
        [[...IN_PROGRESS]],
      );
      if (rows.length === 0) break;
      if (Date.now() - settleStarted > opts.settleTimeoutMs) {
        // Say why each one is stuck: its row and what Temporal knows of its workflow.
        for (const r of rows) {
          const desc = await stack.client.workflow.getHandle(r.workflow_id).describe().then(
            (d) => `workflow ${d.status.name}, ${d.raw.pendingActivities?.length ?? 0} pending activit(ies)`,
            (e: Error) => `workflow: ${e.message}`,
          );
          stuck.push(`snapshot ${r.id} ${r.status} (attempts ${r.backup_attempts}, last change ${new Date(r.updated).toISOString()}): ${desc}`);
        }
        log(`${rows.length} snapshot(s) did not settle within ${opts.settleTimeoutMs / 1000} s`);
        break;
      }
      await new Promise((res) => setTimeout(res, 250));
    }
    log(`settled in ${((Date.now() - settleStarted) / 1000).toFixed(1)} s`);
    const gcRes = await api.call('POST', '/api/v1/storage/gc');
    if (gcRes.status !== 200) throw new Error(`storage GC: ${gcRes.status} ${JSON.stringify(gcRes.body)}`);
    const gc = {
      destroyed: gcRes.body.destroyed.length,
      orphanFiles: gcRes.body.orphanFiles.length,
      failures: gcRes.body.failures,
      orphans: [] as Array<{ path: string; reason: string; snapshotId: string; history: string[] }>,
    };

    // The audit.
    const { rows: eventRows } = await stack.pool.query('SELECT id, type, resource_type, resource_id, description, details, created FROM events ORDER BY id');
    const events: AuditEvent[] = eventRows.map((r) => ({
      id: Number(r.id),
      type: r.type,
      resourceType: r.resource_type,
      resourceId: r.resource_id,
      details: r.details ?? {},
      created: new Date(r.created),
    }));
    const { rows: volRows } = await stack.pool.query('SELECT id, type FROM volumes');
    const audit = auditEvents(events, new Map(volRows.map((r) => [r.id as string, r.type as VolumeType])));
    // What GC had to clean up after the run, with the story of each snapshot concerned (for the report).
    for (const o of gcRes.body.orphanFiles as Array<{ path: string; reason: string; snapshotId: string }>) {
      const history = events
        .filter((e) => e.resourceId === o.snapshotId)
        .map((e) => `#${e.id} ${e.created.toISOString().slice(11, 23)} ${e.type}${e.details.to ? ` -> ${e.details.to}` : ''}: ${e.details.to ? '' : ''}${String((eventRows.find((r) => Number(r.id) === e.id) as any)?.description ?? '').slice(0, 160)}`);
      const deleted = events.find((e) => e.resourceId === o.snapshotId && e.type === 'SNAPSHOT.DELETE' && e.details.to === 'Destroying');
      const duringOutage = !!deleted && outageWindows.some((w) => deleted.created.getTime() >= w.from - 200 && deleted.created.getTime() <= w.to + 200);
      gc.orphans.push({ path: relative(storePath, o.path), reason: `${o.reason}${duringOutage ? '; deleted during an image store outage' : ''}`, snapshotId: o.snapshotId, history });
    }

    // Each refusal must name a snapshot whose in-flight interval overlaps the request (1 s of clock slack).
    const span = new Map<string, { from: number; to: number }>();
    for (const e of events) {
      if (e.resourceType !== 'Snapshot') continue;
      const d = e.details;
      if (e.type === 'SNAPSHOT.CREATE' && !('to' in d)) span.set(e.resourceId, { from: e.created.getTime(), to: Infinity });
      else if (SETTLED.has(d.to) && span.has(e.resourceId)) span.get(e.resourceId)!.to = e.created.getTime();
    }
    const refusals = records.filter((r) => r.code === 'OPERATION_NOT_ALLOWED_DURING_BACKUP');
    const spuriousRefusals = refusals.filter((r) => {
      const s = r.snapshotId ? span.get(r.snapshotId) : undefined;
      return !s || s.from > r.endedAt + 1000 || s.to < r.startedAt - 1000;
    });

    const storage = await checkStorage(stack, storePath);
    const outcomes: Record<string, Record<string, number>> = {};
    for (const r of records) {
      const key = r.code ? `${r.status} ${r.code}` : String(r.status);
      outcomes[r.op] ??= {};
      outcomes[r.op]![key] = (outcomes[r.op]![key] ?? 0) + 1;
    }
    const serverErrors = records.filter((r) => r.status >= 500);
    const report: SoakReport = {
      seed: opts.seed,
      options: {
        seed: opts.seed,
        durationMs: opts.durationMs,
        vms: opts.vms,
        actors: opts.actors,
        outageMs: opts.outageMs,
        outageEveryMs: opts.outageEveryMs,
        backupRateBytesPerSec: opts.backupRateBytesPerSec,
        settleTimeoutMs: opts.settleTimeoutMs,
      },
      requests: records.length,
      outcomes,
      serverErrors,
      spuriousRefusals,
      refusalsDuringBackup: refusals.length,
      outages,
      audit,
      storageProblems: storage.problems,
      stuck,
      finalStates: storage.finalStates,
      gc,
      elapsedSeconds: (Date.now() - started) / 1000,
      ok: false,
    };
    report.ok =
      serverErrors.length === 0 &&
      spuriousRefusals.length === 0 &&
      audit.violations.length === 0 &&
      audit.unsettled.length === 0 &&
      stuck.length === 0 &&
      storage.problems.length === 0;
    return report;
  } finally {
    process.off('SIGINT', interrupted);
    process.off('SIGTERM', interrupted);
    await stopStack();
    running.delete(stopStack);
  }
}

export function summarize(r: SoakReport): string {
  const lines = [
    `soak seed ${r.seed}: ${r.requests} requests in ${r.elapsedSeconds.toFixed(1)} s, ${r.outages} image store outage(s) — ${r.ok ? 'OK' : 'FAILED'}`,
    `snapshots: ${r.audit.intervals} settled in flight intervals; final states ${JSON.stringify(r.finalStates)}; GC destroyed ${r.gc.destroyed}, removed ${r.gc.orphanFiles} orphan file(s)`,
    `operations that ran during a backup of their VM/volume (all allowed): ${JSON.stringify(r.audit.opsDuringBackup)}`,
    `refused with OPERATION_NOT_ALLOWED_DURING_BACKUP: ${r.refusalsDuringBackup}`,
    'outcomes by operation:',
    ...Object.entries(r.outcomes)
      .sort()
      .map(([op, o]) => `  ${op.padEnd(24)} ${JSON.stringify(o)}`),
  ];
  const list = (title: string, xs: unknown[]) => {
    if (xs.length) lines.push(`${title} (${xs.length}):`, ...xs.slice(0, 20).map((x) => `  ${typeof x === 'string' ? x : JSON.stringify(x)}`));
  };
  list('POLICY VIOLATIONS', r.audit.violations.map((v) => v.message));
  list('UNSETTLED SNAPSHOTS', r.audit.unsettled);
  list('STUCK SNAPSHOTS', r.stuck);
  list('5xx ANSWERS', r.serverErrors);
  list('SPURIOUS REFUSALS', r.spuriousRefusals);
  list('STORAGE INCONSISTENCIES', r.storageProblems);
  list('GC FAILURES', r.gc.failures);
  for (const o of r.gc.orphans) lines.push(`orphan file removed by GC: ${o.path} (${o.reason})`, ...o.history.map((h) => `    ${h}`));
  return lines.join('\n');
}

function parseArgs(argv: string[]): SoakOptions {
  const quick = argv.includes('--quick');
  const opts: SoakOptions = { ...(quick ? QUICK : FULL), seed: 1, log: (m) => console.log(`[soak] ${m}`) };
  for (let i = 0; i < argv.length; i++) {
    const num = () => {
      const v = Number(argv[++i]);
      if (!Number.isFinite(v) || v < 0) throw new Error(`${argv[i - 1]} needs a non-negative number`);
      return v;
    };
    switch (argv[i]) {
      case '--quick':
        break;
      case '--seed':
        opts.seed = num();
        break;
      case '--duration':
        opts.durationMs = num() * 1000;
        break;
      case '--vms':
        opts.vms = Math.max(1, Math.floor(num()));
        break;
      case '--actors':
        opts.actors = Math.max(1, Math.floor(num()));
        break;
      case '--no-outages':
        opts.outageMs = 0;
        break;
      case '--help':
        console.log('npm run soak -- [--quick] [--seed N] [--duration S] [--vms N] [--actors N] [--no-outages]');
        process.exit(0);
        break;
      default:
        throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  // Bounded: a few minutes at most.
  opts.durationMs = Math.min(opts.durationMs, 10 * 60_000);
  return opts;
}

if (process.argv[1] && resolve(process.argv[1]) === resolve(import.meta.filename)) {
  const report = await runSoak(parseArgs(process.argv.slice(2)));
  console.log(summarize(report));
  process.exit(report.ok ? 0 : 1);
}
