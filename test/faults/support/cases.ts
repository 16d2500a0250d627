/**
 * The cases of the fault matrix ("Durability at the edges"): a fault × the step of a snapshot it hits. Each case
 * drives one snapshot (or two) of its own volume through the real service, injects its fault, lets the service
 * recover the way an operator would (or waits for it to recover by itself), and hands the auditor what to check.
 */
import { execFile, spawn } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Client, Connection } from '@temporalio/client';
import proto from '@temporalio/proto';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createSnapshotActivities } from '../../../activities/snapshot-activities.js';
import { silentLogger } from '../../../observability/logger.js';
import { KvmStorageDriver } from '../../../storage/kvm.js';
import { qcowTags, type Auditor, type SnapshotExpectation, type Violation } from './auditor.js';
import { MiB, sleep, type ServiceDriver } from './driver.js';

const exec = promisify(execFile);

export type Step = 'allocated' | 'created on primary' | 'copying' | 'copied, not committed' | 'compensating';
export const STEPS: Step[] = ['allocated', 'created on primary', 'copying', 'copied, not committed', 'compensating'];
export type ProcessFault = 'SIGKILL + restart' | 'SIGTERM + restart' | 'Temporal restart' | 'PostgreSQL restart';

export interface CaseContext {
  svc: ServiceDriver;
  auditor: Auditor;
  notes: string[];
  /** Violations the driver itself found (a restart that did not start, a service that did not recover). */
  violations: Violation[];
}

export interface CaseOutput {
  expectations: SnapshotExpectation[];
  volumeIds: string[];
  reached: string;
}

export interface FaultCase {
  fault: string;
  step: string;
  /** Runs in the default `npm test` subset too (otherwise only with FAULTS_FULL=1). */
  subset?: boolean;
  /**
   * Set while a known bug makes the case fail: the case stays in the matrix and its broken invariants are printed,
   * but it does not fail the run. Remove it with the fix (an unexpected pass is reported as "pass (expected to fail)").
   */
  expectedToFailUntil?: string;
  run(ctx: CaseContext): Promise<CaseOutput>;
}

/** How long a snapshot may take to reach BackedUp or Error after its request, faults and recovery included (ms). */
export const TERMINAL_BOUND_MS = 180_000;
/** Seconds an Allocated/Creating row may live: the GC reconciler's 60 s grace plus a run. */
export const IN_FLIGHT_BOUND_S = 90;
/** How long a service gets to recover by itself from a dead dependency before we call it a failure (ms). */
/**
 * How long a dependency's death may keep a snapshot from its terminal state. PostgreSQL: its keeper's restart
 * and the activity's retry. Temporal: an activity that finished while the frontend was away has its report
 * lost once the worker stops retrying it, and the server retries the activity only when its timeout passes
 * (bookkeeping, e.g. the compensation: 1 minute start-to-close; docs/running.md).
 */
const SELF_RECOVERY_MS: Record<'Temporal restart' | 'PostgreSQL restart', number> = { 'Temporal restart': 90_000, 'PostgreSQL restart': 45_000 };

const MAX_ATTEMPTS_DEFAULT = 3;

// ---------------------------------------------------------------------------------------------------------------
// Process faults × step

async function injectProcessFault(ctx: CaseContext, fault: ProcessFault): Promise<void> {
  const { svc } = ctx;
  const pgid = svc.proc!.child.pid!;
  switch (fault) {
    case 'SIGKILL + restart':
      process.kill(-pgid, 'SIGKILL');
      return;
    case 'SIGTERM + restart':
      process.kill(-pgid, 'SIGTERM');
      return;
    case 'Temporal restart': {
      const pid = svc.temporalPid();
      if (!pid) throw new Error('no Temporal dev server process found in the service group');
      process.kill(pid, 'SIGKILL');
      return;
    }
    case 'PostgreSQL restart': {
      const pid = svc.postmasterPid();
      if (!pid) throw new Error('no postmaster.pid in the data dir');
      // SIGINT to the postmaster: PostgreSQL's fast shutdown (sessions ended, clean checkpoint).
      process.kill(pid, 'SIGINT');
      return;
    }
  }
}

/** Starts the service again at once on the same data dir; a start that fails is a broken invariant (DESIGN §9, §12). */
async function restartAtOnce(ctx: CaseContext): Promise<void> {
  const { svc } = ctx;
  const t0 = Date.now();
  const logFrom = svc.logSize();
  try {
    await svc.start(60_000);
    ctx.notes.push(`restarted in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  } catch (err) {
    ctx.violations.push({ invariant: 'restart-starts-at-once', detail: `npm start on the same data dir failed: ${(err as Error).message.slice(0, 200)}; log: ${svc.lastError(logFrom).slice(0, 200)}` });
    await svc.killGroup();
    await sleep(5000);
    await svc.ensureUp();
    ctx.notes.push('started on a later try, 5 s after the failed one');
  }
}

async function recoverFromProcessFault(ctx: CaseContext, fault: ProcessFault, volumeId: string): Promise<void> {
  const { svc } = ctx;
  if (fault === 'SIGKILL + restart') {
    await svc.killGroup(); // waits for the exit
    return restartAtOnce(ctx);
  }
  if (fault === 'SIGTERM + restart') {
    const t0 = Date.now();
    const code = await svc.terminate(40_000);
    if (code !== 0) ctx.violations.push({ invariant: 'clean-shutdown', detail: `SIGTERM: exit ${code ?? 'none (SIGKILLed after 40 s)'}` });
    else ctx.notes.push(`SIGTERM exit 0 after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    return restartAtOnce(ctx);
  }
  // A dependency went away under a running service: does it come back by itself?
  const t0 = Date.now();
  const window = SELF_RECOVERY_MS[fault];
  const deadline = t0 + window;
  let healthy = false;
  let terminal = false;
  while (Date.now() < deadline) {
    healthy = await svc.healthy();
    const s = await ctx.auditor.pool.query('SELECT status FROM snapshots WHERE volume_id = $1', [volumeId]).then(
      (r) => r.rows.every((x) => ['BackedUp', 'Error', 'Destroyed'].includes(x.status)),
      () => false,
    );
    terminal = s;
    if (healthy && terminal) break;
    await sleep(1000);
  }
  if (!healthy || !terminal) {
    const health = await fetch(`${svc.url}/healthz`, { signal: AbortSignal.timeout(5000) }).then(
      async (r) => `${r.status} ${(await r.text()).slice(0, 160)}`,
      (e: unknown) => `no answer in 5 s (${String(e).slice(0, 60)})`,
    );
    ctx.violations.push({
      invariant: 'recovers-without-restart',
      detail: `${window / 1000} s after the ${fault === 'Temporal restart' ? 'Temporal dev server' : 'PostgreSQL server'} died: ` +
        `healthz ${healthy ? 'ok' : 'not ok'} (${health}), snapshot ${terminal ? 'terminal' : 'not terminal (or unreadable)'}`,
    });
    ctx.notes.push('recovered by an operator restart (SIGTERM, then npm start) to audit durability');
    await svc.terminate(40_000);
    await svc.ensureUp();
  } else {
    ctx.notes.push(`recovered by itself in ${Math.round((Date.now() - t0) / 1000)} s`);
  }
}

/** The service's pause point (observability/pause-points.ts) where each step is held. */
const STEP_POINTS: Record<Step, string> = {
  allocated: 'allocated',
  'created on primary': 'created-on-primary',
  copying: 'copying',
  'copied, not committed': 'copied',
  compensating: 'compensated',
};

/** What is not as the step says, read while the service holds there; null when all is. */
async function stepMismatch(ctx: CaseContext, step: Step, id: string, vol: { accountId: string; volumeId: string }): Promise<string | null> {
  const { svc } = ctx;
  const { rows } = await svc.pool.query(
    `SELECT s.status, (SELECT state FROM snapshot_store_ref WHERE snapshot_id = s.id AND store_role = 'Primary') AS primary_state
       FROM snapshots s WHERE s.id = $1`,
    [id],
  );
  const status: string | undefined = rows[0]?.status;
  const files = svc.backupFiles(vol.accountId, vol.volumeId, id);
  const want = (ok: boolean, what: string) => (ok ? null : what);
  switch (step) {
    case 'allocated':
      return want(status === 'Allocated', `the row is ${status}`);
    case 'created on primary':
      return want(status === 'CreatedOnPrimary', `the row is ${status}`);
    case 'copying':
      return want(status === 'BackingUp' && files.temp && !files.final, `row ${status}, temporary file ${files.temp}, final file ${files.final}`);
    case 'copied, not committed':
      return want(status === 'BackingUp' && files.final, `row ${status}, final file ${files.final}`);
    case 'compensating':
      return want(status === 'BackingUp' && rows[0]?.primary_state === 'Destroyed', `row ${status}, Primary ref ${rows[0]?.primary_state}`);
  }
}

export function processFaultCase(fault: ProcessFault, step: Step, extra: Partial<FaultCase> = {}): FaultCase {
  return {
    fault,
    step,
    ...extra,
    async run(ctx) {
      const { svc } = ctx;
      const name = `${fault.split(' ')[0]!.toLowerCase()}-${step.split(/[ ,]/)[0]}-${randomUUID().slice(0, 4)}`;
      const vol = await svc.createDataVolume(name);
      const compensating = step === 'compensating';
      let restoreStore: (() => Promise<void>) | null = null;
      if (compensating) {
        await svc.setConfig('backup.max.attempts', 2);
        restoreStore = await svc.breakImageStore();
      }
      const point = STEP_POINTS[step];
      svc.arm(point, vol.volumeId);
      let reached = '?';
      const request = svc.requestSnapshot(vol.volumeId, name);
      try {
        const at = await svc.reached(point, vol.volumeId, compensating ? 90_000 : 60_000);
        const id = String(at.snapshotId);
        // The service holds at the point; what the step says must be true now, or the case is not the one it claims.
        const miss = await stepMismatch(ctx, step, id, vol);
        reached = miss ? `${point} (held), but ${miss} (missed)` : `${point} (held)`;
        if (miss) ctx.violations.push({ invariant: 'step-reached', snapshotId: id, detail: miss });
        await injectProcessFault(ctx, fault);
      } finally {
        svc.release(point, vol.volumeId);
      }
      if (restoreStore) await restoreStore();
      const answer = await Promise.race([request, sleep(1000).then(() => null)]);
      await recoverFromProcessFault(ctx, fault, vol.volumeId);
      if (compensating) await svc.setConfig('backup.max.attempts', MAX_ATTEMPTS_DEFAULT);
      const told = answer && answer.status === 201;
      ctx.notes.push(`POST answered ${answer ? ('error' in answer ? `no answer (${answer.error.slice(0, 80)})` : answer.status) : 'nothing yet'}`);
      const ids = await ctx.auditor.snapshotIdsOfVolume(vol.volumeId);
      return {
        volumeIds: [vol.volumeId],
        reached,
        expectations: ids.map((snapshotId) => ({
          snapshotId,
          copyFailures: compensating ? 2 : 0,
          outcome: compensating ? 'Error' : told ? 'BackedUp' : 'either',
        })),
      };
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Deltas and deletes, killed at their own steps

/** A snapshot of the volume taken to BackedUp (asyncBackup), for a case's setup. */
async function backedUpSnapshot(ctx: CaseContext, volumeId: string, name: string): Promise<string> {
  const answer = await ctx.svc.requestSnapshot(volumeId, name);
  if (answer.status !== 201) throw new Error(`setup: POST snapshot answered ${answer.status}`);
  const id = answer.json.id;
  await ctx.svc.until(
    async () => {
      const { rows } = await ctx.svc.pool.query('SELECT status FROM snapshots WHERE id = $1', [id]);
      const st = rows[0]?.status;
      if (st && st !== 'BackedUp' && !['Allocated', 'Creating', 'CreatedOnPrimary', 'BackingUp'].includes(st)) throw new Error(`setup: snapshot ended ${st}`);
      return st === 'BackedUp' ? true : undefined;
    },
    120_000,
    'the setup snapshot to be backed up',
  );
  return id;
}

/**
 * SIGKILL of the whole service while a delta is being written: by changed clusters (a 1 GiB volume with eight
 * separate changes, where copying ranges is cheaper) or by rebasing onto the parent backup (a 64 MiB volume with
 * as many changes, where a rebase is). After the restart the delta is written again on the same parent, the
 * parent is untouched, and both verify.
 */
export function deltaFaultCase(method: 'changed clusters' | 'rebase', extra: Partial<FaultCase> = {}): FaultCase {
  return {
    fault: 'SIGKILL + restart',
    step: `writing a delta (${method})`,
    ...extra,
    async run(ctx) {
      const { svc } = ctx;
      const name = `delta-${method === 'rebase' ? 'rebase' : 'ranges'}-${randomUUID().slice(0, 4)}`;
      const vol = await svc.createDataVolume(name, method === 'rebase' ? 64 * MiB : 1024 * MiB);
      const parentId = await backedUpSnapshot(ctx, vol.volumeId, `${name}-base`);
      const parentFile = join(svc.secondaryDir, 'snapshots', vol.accountId, vol.volumeId, `${parentId}.qcow2`);
      const parentBefore = await sha256(parentFile);
      for (let i = 0; i < 8; i++) await exec('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x${(0x30 + i).toString(16)} ${i * 6 * MiB} ${MiB}`, vol.path]);
      const logFrom = svc.logSize();
      svc.arm('copying-delta', vol.volumeId);
      const request = svc.requestSnapshot(vol.volumeId, `${name}-delta`);
      let reached: string;
      try {
        const at = await svc.reached('copying-delta', vol.volumeId);
        const id = String(at.snapshotId);
        const files = svc.backupFiles(vol.accountId, vol.volumeId, id);
        const log = readFileSync(svc.logFile, 'utf8').slice(logFrom);
        const how = log.split('\n').find((l) => l.includes('writing a delta') && l.includes(id));
        const miss = !files.temp || files.final ? `temporary file ${files.temp}, final file ${files.final}` : !how?.includes(`"method":"${method}"`) ? `not by ${method}: ${how ?? 'no delta logged'}` : null;
        reached = miss ? `delta held, but ${miss} (missed)` : `delta by ${method} held mid-write (${String(at.bytesDone)} bytes reported)`;
        if (miss) ctx.violations.push({ invariant: 'step-reached', snapshotId: id, detail: miss });
        process.kill(-svc.proc!.child.pid!, 'SIGKILL');
      } finally {
        svc.release('copying-delta', vol.volumeId);
      }
      const answer = await Promise.race([request, sleep(1000).then(() => null)]);
      await recoverFromProcessFault(ctx, 'SIGKILL + restart', vol.volumeId);
      const ids = await ctx.auditor.snapshotIdsOfVolume(vol.volumeId);
      await ctx.auditor.waitTerminal(ids, Date.now() + TERMINAL_BOUND_MS);
      if ((await sha256(parentFile)) !== parentBefore) ctx.violations.push({ invariant: 'parent-untouched', snapshotId: parentId, detail: 'the parent backup file changed' });
      const { rows } = await svc.pool.query(
        `SELECT snapshot_id, parent_snapshot_id FROM snapshot_store_ref WHERE store_role = 'Image' AND snapshot_id = ANY($1::uuid[]) AND snapshot_id <> $2`,
        [ids, parentId],
      );
      if (rows[0] && rows[0].parent_snapshot_id !== parentId) ctx.notes.push(`the delta was written again as ${rows[0].parent_snapshot_id ? 'a delta' : 'a full backup'}`);
      const told = answer && answer.status === 201;
      return {
        volumeIds: [vol.volumeId],
        reached,
        expectations: ids.map((snapshotId) => ({ snapshotId, copyFailures: 0, outcome: snapshotId === parentId || told ? ('BackedUp' as const) : ('either' as const) })),
      };
    },
  };
}

/**
 * SIGKILL of the whole service in a phase of a user's delete of a BackedUp snapshot: right after the intent
 * (Destroying) is committed, or after the files are gone and before Destroyed is. The restarted service finishes
 * the delete at start-up: Destroyed, its tag and its backup gone, nothing else touched.
 */
export function deleteFaultCase(phase: 'delete-intent' | 'delete-storage-done', extra: Partial<FaultCase> = {}): FaultCase {
  return {
    fault: 'SIGKILL + restart',
    step: phase === 'delete-intent' ? 'delete: Destroying committed, nothing removed' : 'delete: files removed, Destroyed not committed',
    ...extra,
    async run(ctx) {
      const { svc } = ctx;
      const name = `${phase}-${randomUUID().slice(0, 4)}`;
      const vol = await svc.createDataVolume(name);
      const keptId = await backedUpSnapshot(ctx, vol.volumeId, `${name}-kept`);
      await exec('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x77 0 ${MiB}`, vol.path]);
      const id = await backedUpSnapshot(ctx, vol.volumeId, `${name}-deleted`);
      svc.arm(phase, vol.volumeId);
      const answer = svc.deleteSnapshot(id);
      let reached: string;
      try {
        await svc.reached(phase, vol.volumeId);
        const { rows } = await svc.pool.query('SELECT status FROM snapshots WHERE id = $1', [id]);
        const files = svc.backupFiles(vol.accountId, vol.volumeId, id);
        const tags = await qcowTags(vol.path);
        const removed = !files.final && !tags?.includes(id);
        const ok = rows[0]?.status === 'Destroying' && (phase === 'delete-intent' ? !removed : removed);
        const state = `row ${rows[0]?.status}, backup file ${files.final ? 'present' : 'gone'}, tag ${tags?.includes(id) ? 'present' : 'gone'}`;
        reached = ok ? `${phase} (held): ${state}` : `${phase} (held), but ${state} (missed)`;
        if (!ok) ctx.violations.push({ invariant: 'step-reached', snapshotId: id, detail: state });
        process.kill(-svc.proc!.child.pid!, 'SIGKILL');
      } finally {
        svc.release(phase, vol.volumeId);
      }
      ctx.notes.push(`DELETE answered ${await Promise.race([answer.then((a) => String(a.status)), sleep(1000).then(() => 'nothing')])}`);
      await recoverFromProcessFault(ctx, 'SIGKILL + restart', vol.volumeId);
      return {
        volumeIds: [vol.volumeId],
        reached,
        expectations: [
          { snapshotId: keptId, copyFailures: 0, outcome: 'BackedUp' },
          { snapshotId: id, copyFailures: 0, outcome: 'Destroyed' },
        ],
      };
    },
  };
}

async function sha256(file: string): Promise<string> {
  return createHash('sha256').update(await readFile(file)).digest('hex');
}

// ---------------------------------------------------------------------------------------------------------------
// Storage faults

async function waitState(ctx: CaseContext, volumeId: string, states: string[], timeoutMs = 120_000): Promise<{ id: string; status: string }> {
  return ctx.svc.until(
    async () => {
      const s = await ctx.svc.statusOf(volumeId);
      return s && states.includes(s.status) ? s : undefined;
    },
    timeoutMs,
    `snapshot ${states.join('/')}`,
  );
}

export const imageStoreUnusableCase: FaultCase = {
  fault: 'image store unusable',
  step: 'copying (first attempt)',
  async run(ctx) {
    const { svc } = ctx;
    const vol = await svc.createDataVolume(`store-${randomUUID().slice(0, 4)}`);
    const restore = await svc.breakImageStore();
    let restored = false;
    try {
      const answer = await svc.requestSnapshot(vol.volumeId, 'store-unusable');
      ctx.notes.push(`POST answered ${answer.status}`);
      await svc.until(
        async () => {
          const s = await svc.statusOf(vol.volumeId);
          return s && (s.last_error || ['Error', 'BackedUp'].includes(s.status)) ? true : undefined;
        },
        60_000,
        'the first copy failure',
      );
      await restore();
      restored = true;
    } finally {
      if (!restored) await restore();
    }
    return {
      volumeIds: [vol.volumeId],
      reached: 'attempt 1 failed on the unusable store; store restored before attempt 2',
      expectations: (await ctx.auditor.snapshotIdsOfVolume(vol.volumeId)).map((snapshotId) => ({ snapshotId, copyFailures: 1, outcome: 'BackedUp' as const })),
    };
  },
};

export const imageLockCase: FaultCase = {
  fault: 'image write lock held',
  step: 'created on primary',
  async run(ctx) {
    const { svc } = ctx;
    const vol = await svc.createDataVolume(`lock-${randomUUID().slice(0, 4)}`);
    // qemu-io without -U/-r opens the image read-write and takes its write lock until it quits.
    const holder = spawn('qemu-io', ['-f', 'qcow2', vol.path], { stdio: ['pipe', 'ignore', 'ignore'] });
    await sleep(500);
    const t0 = Date.now();
    const request = svc.requestSnapshot(vol.volumeId, 'lock-clash');
    await sleep(3000);
    holder.stdin!.end('quit\n');
    await new Promise((r) => holder.once('exit', r));
    const answer = await request;
    ctx.notes.push(`POST answered ${answer.status} after ${((Date.now() - t0) / 1000).toFixed(1)} s (lock held 3 s)`);
    if (answer.status !== 201) {
      ctx.violations.push({ invariant: 'outcome', detail: `POST ${answer.status}: ${JSON.stringify('json' in answer ? answer.json : answer.error).slice(0, 200)}` });
    }
    return {
      volumeIds: [vol.volumeId],
      reached: 'write lock held by qemu-io for 3 s from the request on',
      expectations: (await ctx.auditor.snapshotIdsOfVolume(vol.volumeId)).map((snapshotId) => ({ snapshotId, copyFailures: 0, outcome: 'BackedUp' as const })),
    };
  },
};

// ---------------------------------------------------------------------------------------------------------------
// Operator and at-least-once faults, on a finished snapshot

/** A snapshot taken to its end: BackedUp, or Error (every attempt failed on an unusable store, one attempt). */
async function finishedSnapshot(ctx: CaseContext, end: 'BackedUp' | 'Error'): Promise<{ id: string; volumeId: string; copyFailures: number }> {
  const { svc } = ctx;
  const vol = await svc.createDataVolume(`done-${end}-${randomUUID().slice(0, 4)}`);
  if (end === 'BackedUp') {
    await svc.requestSnapshot(vol.volumeId, 'done');
    const s = await waitState(ctx, vol.volumeId, ['BackedUp', 'Error']);
    if (s.status !== 'BackedUp') throw new Error(`setup: snapshot ended ${s.status}`);
    return { id: s.id, volumeId: vol.volumeId, copyFailures: 0 };
  }
  await svc.setConfig('backup.max.attempts', 1);
  const restore = await svc.breakImageStore();
  try {
    await svc.requestSnapshot(vol.volumeId, 'failed');
    const s = await waitState(ctx, vol.volumeId, ['BackedUp', 'Error']);
    if (s.status !== 'Error') throw new Error(`setup: snapshot ended ${s.status}`);
    return { id: s.id, volumeId: vol.volumeId, copyFailures: 1 };
  } finally {
    await restore();
    await svc.setConfig('backup.max.attempts', MAX_ATTEMPTS_DEFAULT);
  }
}

async function rowState(ctx: CaseContext, id: string): Promise<string> {
  const { rows } = await ctx.auditor.pool.query(
    `SELECT s.status, s.backup_attempts, coalesce(json_agg(json_build_object('role', r.store_role, 'state', r.state) ORDER BY r.store_role)
       FILTER (WHERE r.id IS NOT NULL), '[]') AS refs
       FROM snapshots s LEFT JOIN snapshot_store_ref r ON r.snapshot_id = s.id WHERE s.id = $1 GROUP BY s.id`,
    [id],
  );
  return JSON.stringify(rows[0]);
}

export function activityTwiceCase(after: 'BackedUp' | 'Error', extra: Partial<FaultCase> = {}): FaultCase {
  return {
    fault: 'activity delivered twice',
    step: `after ${after}`,
    ...extra,
    async run(ctx) {
      const snap = await finishedSnapshot(ctx, after);
      const before = await rowState(ctx, snap.id);
      const { svc } = ctx;
      // The same factory the worker runs, against the same database and storage, delivered once more.
      const activities = createSnapshotActivities({ pool: svc.pool, drivers: { KVM: new KvmStorageDriver({ logger: silentLogger }) }, logger: silentLogger });
      const env = new MockActivityEnvironment({ attempt: 2 });
      const run = async (what: string, fn: () => Promise<unknown>) => {
        try {
          const r = await env.run(fn);
          ctx.notes.push(`${what} → ${JSON.stringify(r)?.slice(0, 120)}`);
        } catch (err) {
          ctx.notes.push(`${what} → threw ${(err as Error).message.slice(0, 120)}`);
        }
      };
      await run('createSnapshotOnPrimary', () => activities.createSnapshotOnPrimary({ snapshotId: snap.id }));
      await run('backupSnapshotToSecondary', () => activities.backupSnapshotToSecondary({ snapshotId: snap.id, attempt: 1, maxAttempts: 3 }));
      await run('deletePrimarySnapshot', () => activities.deletePrimarySnapshot({ snapshotId: snap.id }));
      await run('markSnapshotError', () => activities.markSnapshotError({ snapshotId: snap.id, reason: 'delivered twice' }));
      const afterState = await rowState(ctx, snap.id);
      if (afterState !== before) ctx.violations.push({ invariant: 'redelivery-changes-nothing', snapshotId: snap.id, detail: `${before} → ${afterState}` });
      return {
        volumeIds: [snap.volumeId],
        reached: `${after}, then every snapshot activity once more`,
        expectations: [{ snapshotId: snap.id, copyFailures: snap.copyFailures, outcome: after }],
      };
    },
  };
}

export function workflowResetCase(after: 'BackedUp' | 'Error', extra: Partial<FaultCase> = {}): FaultCase {
  return {
    fault: 'workflow reset to first task',
    step: `after ${after}`,
    ...extra,
    async run(ctx) {
      const snap = await finishedSnapshot(ctx, after);
      const before = await rowState(ctx, snap.id);
      const connection = await Connection.connect({ address: ctx.svc.temporalAddress });
      try {
        const client = new Client({ connection, namespace: 'default' });
        const workflowId = `snapshot-${snap.id}`;
        const handle = client.workflow.getHandle(workflowId);
        // The row can be terminal a moment before the workflow closes.
        await handle.result().catch(() => undefined);
        const { runId } = await handle.describe();
        const history = await handle.fetchHistory();
        const first = history.events?.find((e) => e.eventType === proto.temporal.api.enums.v1.EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED);
        if (!first?.eventId) throw new Error('no WorkflowTaskCompleted event in the history');
        const { runId: newRunId } = await connection.workflowService.resetWorkflowExecution({
          namespace: 'default',
          workflowExecution: { workflowId, runId },
          reason: 'fault matrix: operator reset to the first workflow task',
          workflowTaskFinishEventId: first.eventId,
          requestId: randomUUID(),
        });
        const newRun = client.workflow.getHandle(workflowId, newRunId!);
        const result = await Promise.race([
          newRun.result().then((r) => `completed ${JSON.stringify(r).slice(0, 100)}`, (e: Error) => `failed: ${(e.cause as Error | undefined)?.message ?? e.message}`.slice(0, 200)),
          sleep(120_000).then(() => null),
        ]);
        if (result === null) ctx.violations.push({ invariant: 'terminal-within-bound', snapshotId: snap.id, detail: 'the reset run did not close within 120 s' });
        else ctx.notes.push(`reset run ${result}`);
      } finally {
        await connection.close();
      }
      const afterState = await rowState(ctx, snap.id);
      if (afterState !== before) ctx.violations.push({ invariant: 'reset-changes-nothing', snapshotId: snap.id, detail: `${before} → ${afterState}` });
      return {
        volumeIds: [snap.volumeId],
        reached: `${after}, workflow reset to event ${'first WorkflowTaskCompleted'}`,
        expectations: [{ snapshotId: snap.id, copyFailures: snap.copyFailures, outcome: after }],
      };
    },
  };
}
