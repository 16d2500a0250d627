/**
 * P2 VM actions during backups: latency of allowed VM actions (reboot, change-service-offering, stop, start)
 * while 10 rate-limited backups of the VMs' ROOT disks run, against the same actions with no backup running
 * (measured before and after).
 */
import { check, waitUntil, type BenchContext, type TargetCheck } from './context.js';
import { fillImage } from './lib/images.js';
import { cpuDiff, cpuSnapshot, type CpuUsage } from './lib/system.js';
import { MiB, ratio, round, summarize, type Summary } from './lib/stats.js';
import { KvmStorageDriver } from '../storage/kvm.js';

export interface P2Result {
  vms: number;
  backups: number;
  rateLimitBytesPerSec: number;
  rateLimitSource: string;
  filledBytesPerDisk: number;
  samplesPerPhase: number;
  baselineBefore: Summary;
  duringBackups: Summary;
  baselineAfter: Summary;
  baseline: Summary;
  byAction: Record<string, { baseline: Summary; duringBackups: Summary }>;
  p50Ratio: number;
  p95Ratio: number;
  p99Ratio: number;
  backupsStillRunningAtEnd: number;
  backupBytesDoneDuringMeasurement: number;
  cpuDuringBackups: CpuUsage;
  cpuBaselineBefore: CpuUsage;
  notes: string[];
  targets: TargetCheck[];
}

const CYCLE = ['reboot', 'change-service-offering', 'stop', 'start'] as const;

export async function runP2(ctx: BenchContext): Promise<P2Result> {
  const { stack, user, quick, log } = ctx;
  const nVms = 10;
  const samples = quick ? 40 : 500;
  const envRate = process.env.BACKUP_RATE_LIMIT_BYTES_PER_SEC;
  const rate = envRate ? Number(envRate) : 8 * MiB;
  // Enough data that every backup outlasts the measurement by a wide margin at this rate.
  const windowSeconds = quick ? 8 : 30;
  const fill = Math.ceil((rate * windowSeconds) / MiB) * MiB;

  const offerings = (await user.expect([200], 'GET', '/api/v1/service-offerings')).body as Array<{ id: string }>;
  const vms: Array<{ id: string; rootVolumeId: string; step: number }> = [];
  for (let i = 0; i < nVms; i++) {
    const r = await user.expect([201], 'POST', '/api/v1/vms', { name: `p2-vm-${i}`, hypervisor: 'KVM', rootDiskSizeBytes: fill });
    const root = (r.body.volumes as Array<{ id: string; type: string }>).find((v) => v.type === 'ROOT')!;
    await fillImage(await ctx.volumePath(root.id), fill);
    vms.push({ id: r.body.id, rootVolumeId: root.id, step: 0 });
  }
  log(`P2: ${nVms} VMs with ${fill / MiB} MiB ROOT disks ready`);

  const byAction = new Map<string, { baseline: number[]; loaded: number[] }>(CYCLE.map((a) => [a, { baseline: [], loaded: [] }]));
  const act = async (phase: 'baseline' | 'loaded', k: number): Promise<number> => {
    const vm = vms[k % nVms]!;
    const action = CYCLE[vm.step % CYCLE.length]!;
    vm.step++;
    const body =
      action === 'change-service-offering' ? { action, serviceOfferingId: offerings[vm.step % offerings.length]!.id } : { action };
    const r = await user.expect([200], 'POST', `/api/v1/vms/${vm.id}/actions`, body);
    byAction.get(action)![phase].push(r.ms);
    return r.ms;
  };
  const measure = async (phase: 'baseline' | 'loaded') => {
    const out: number[] = [];
    for (let k = 0; k < samples; k++) out.push(await act(phase, k));
    return out;
  };

  // Warm-up, then the baseline before any backup.
  for (let k = 0; k < nVms * CYCLE.length; k++) await act('baseline', k);
  for (const v of byAction.values()) v.baseline.length = 0;
  let c0 = cpuSnapshot();
  const before = await measure('baseline');
  const cpuBefore = cpuDiff(c0, cpuSnapshot());

  // The same rate cap BACKUP_RATE_LIMIT_BYTES_PER_SEC gives the stack's driver at start-up, for this phase only
  // (the other phases measure uncapped backups).
  const original = stack.drivers.KVM!;
  stack.drivers.KVM = new KvmStorageDriver({ backupRateLimitBytesPerSec: rate });
  const snapIds: string[] = [];
  let stillRunning = 0;
  let bytesDuring = 0;
  let loaded: number[] = [];
  let cpuLoaded: CpuUsage;
  try {
    for (const vm of vms) {
      const r = await user.expect([201], 'POST', `/api/v1/volumes/${vm.rootVolumeId}/snapshots`, { asyncBackup: true });
      snapIds.push(r.body.id);
    }
    const progress = async () =>
      (await stack.pool.query<{ n: string; done: string }>(
        `SELECT count(*) AS n, coalesce(sum(backup_bytes_done), 0) AS done FROM snapshots WHERE id = ANY($1::uuid[]) AND status = 'BackingUp'`,
        [snapIds],
      )).rows[0]!;
    await waitUntil(
      async () => (await stack.pool.query(`SELECT 1 FROM snapshots WHERE id = ANY($1::uuid[]) AND status = 'BackingUp' AND backup_bytes_done > 0`, [snapIds])).rowCount === nVms,
      60_000,
      'all 10 backups to be copying',
      100,
    );
    const p0 = await progress();
    log(`P2: ${nVms} backups copying at ${rate / MiB} MiB/s each; measuring`);
    c0 = cpuSnapshot();
    loaded = await measure('loaded');
    cpuLoaded = cpuDiff(c0, cpuSnapshot());
    const p1 = await progress();
    stillRunning = Number(p1.n);
    bytesDuring = Number(p1.done) - Number(p0.done);
  } finally {
    // Let the backups finish (the data was sized to outlast the measurement, not by much).
    await waitUntil(
      async () => (await stack.pool.query(`SELECT 1 FROM snapshots WHERE id = ANY($1::uuid[]) AND status IN ('BackedUp', 'Error')`, [snapIds])).rowCount === snapIds.length,
      (windowSeconds * 4 + 60) * 1000,
      'the backups to finish',
      200,
    ).catch((err) => log(`P2: ${String(err)}`));
    stack.drivers.KVM = original;
  }
  log('P2: backups finished; measuring the baseline after');
  const after = await measure('baseline');

  const baselineAll = [...before, ...after];
  const b = summarize(baselineAll);
  const l = summarize(loaded);
  const p99Ratio = ratio(l.p99, b.p99);
  return {
    vms: nVms,
    backups: snapIds.length,
    rateLimitBytesPerSec: rate,
    rateLimitSource: envRate ? 'BACKUP_RATE_LIMIT_BYTES_PER_SEC from the environment' : 'bench default (8 MiB/s); set BACKUP_RATE_LIMIT_BYTES_PER_SEC to change it',
    filledBytesPerDisk: fill,
    samplesPerPhase: samples,
    baselineBefore: summarize(before),
    duringBackups: l,
    baselineAfter: summarize(after),
    baseline: b,
    byAction: Object.fromEntries([...byAction].map(([a, v]) => [a, { baseline: summarize(v.baseline), duringBackups: summarize(v.loaded) }])),
    p50Ratio: ratio(l.p50, b.p50),
    p95Ratio: ratio(l.p95, b.p95),
    p99Ratio,
    backupsStillRunningAtEnd: stillRunning,
    backupBytesDoneDuringMeasurement: bytesDuring,
    cpuDuringBackups: cpuLoaded!,
    cpuBaselineBefore: cpuBefore,
    notes: [
      `${nVms} VMs, each with a ${fill / MiB} MiB ROOT disk filled with data; one async snapshot of each → ${nVms} backups copying at once (backup.pool.size 10)`,
      `backups capped with qemu-img convert -r ${rate} (bytes/s each), the cap BACKUP_RATE_LIMIT_BYTES_PER_SEC sets; installed for this phase only`,
      `actions cycle reboot → change-service-offering → stop → start per VM over the 10 VMs, sequentially, ${samples} per phase`,
      'baseline = the same actions on the same VMs with no snapshot in flight, before the backups and after they finished (pooled)',
      `backups still copying when the measurement ended: ${stillRunning}/${nVms}; bytes copied meanwhile: ${round(bytesDuring / MiB, 1)} MiB`,
    ],
    targets: [check('P2.p99-ratio', 'VM action p99 during 10 backups / p99 without', p99Ratio, '<=', 1.5)],
  };
}
