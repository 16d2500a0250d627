/**
 * P4 orchestration overhead: snapshots per second sustained through the snapshot service (async, small
 * volumes) against a no-op workflow of the same shape (bench/noop-workflow.ts: Update-with-Start, two
 * activities on two task queues) served by a bench worker pair on its own task queues, same server, same process.
 */
import type { Client } from '@temporalio/client';
import { check, type BenchContext, type TargetCheck } from './context.js';
import { historyProblems, historySpans, medianSpans, primaryAsLocalActivity } from './lib/history.js';
import { fillImage } from './lib/images.js';
import { cpuDiff, cpuSnapshot, sumCpu, type CpuUsage } from './lib/system.js';
import { MiB, ratio, round, summarize, type Summary } from './lib/stats.js';
import type { NoopWorkers } from './lib/noop.js';


export interface P4Side {
  snapshots: number;
  createdPerSec: number;
  completedPerSec: number;
  createdLatency: Summary;
  /** Medians over sampled workflow histories (ms from WorkflowExecutionStarted unless noted). */
  spans: Record<string, number>;
  historyEvents: number;
  /** Failed or timed-out workflow tasks / activities over every measured workflow (the success path has none). */
  problems: Record<string, number>;
  cpu: CpuUsage;
}

export interface P4Result {
  concurrency: number;
  volumes: number;
  real: P4Side;
  noop: P4Side;
  completedRatio: number;
  createdRatio: number;
  notes: string[];
  targets: TargetCheck[];
}

async function sampleSpans(client: Client, workflowIds: string[]): Promise<{ spans: Record<string, number>; events: number }> {
  const all: Array<Record<string, number>> = [];
  for (const id of workflowIds) all.push(await historySpans(client, id));
  const spans = medianSpans(all);
  return { spans, events: spans['history events (count)'] ?? 0 };
}

/** Runs `n` jobs with at most `c` in flight; returns each job's latency and the time the last one resolved. */
async function closedLoop(n: number, c: number, job: (i: number) => Promise<void>): Promise<number[]> {
  const lat: number[] = new Array(n);
  let next = 0;
  await Promise.all(
    Array.from({ length: c }, async () => {
      for (;;) {
        const i = next++;
        if (i >= n) return;
        const t = performance.now();
        await job(i);
        lat[i] = performance.now() - t;
      }
    }),
  );
  return lat;
}

export async function runP4(ctx: BenchContext, noopWorkers: NoopWorkers): Promise<P4Result> {
  const { stack, user, quick, log } = ctx;
  const total = quick ? 32 : 200;
  const rounds = 2;
  const perRound = total / rounds;
  const concurrency = 8;
  const nVolumes = 16;
  const client = stack.client;
  const poolSize = Number((await stack.pool.query(`SELECT value FROM configuration WHERE name = 'backup.pool.size'`)).rows[0]?.value ?? 10);

  const volumes: Array<{ id: string; accountId: string }> = [];
  for (let i = 0; i < nVolumes; i++) {
    const v = await user.expect([201], 'POST', '/api/v1/volumes', { name: `p4-${i}`, sizeBytes: 64 * MiB });
    await fillImage(await ctx.volumePath(v.body.id), 1 * MiB);
    volumes.push({ id: v.body.id, accountId: v.body.accountId });
  }

  const realSide = async (n: number) => {
    const ids: string[] = new Array(n);
    let createdAt = 0;
    const t0 = performance.now();
    const lat = await closedLoop(n, concurrency, async (i) => {
      const v = volumes[i % nVolumes]!;
      const { snapshot } = await stack.snapshots.requestSnapshot({ accountId: v.accountId, volumeId: v.id, asyncBackup: true });
      ids[i] = snapshot.workflowId;
      createdAt = performance.now();
    });
    await Promise.all(ids.map((id) => client.workflow.getHandle(id).result()));
    return { ids, lat, createdSeconds: (createdAt - t0) / 1000, completedSeconds: (performance.now() - t0) / 1000 };
  };
  const noopSide = async (n: number) => {
    const ids: string[] = new Array(n);
    let createdAt = 0;
    const t0 = performance.now();
    const lat = await closedLoop(n, concurrency, async (i) => {
      ids[i] = (await noopWorkers.startOne()).workflowId;
      createdAt = performance.now();
    });
    await Promise.all(ids.map((id) => client.workflow.getHandle(id).result()));
    return { ids, lat, createdSeconds: (createdAt - t0) / 1000, completedSeconds: (performance.now() - t0) / 1000 };
  };

  const acc = {
    real: { ids: [] as string[], lat: [] as number[], created: 0, completed: 0, cpu: [] as CpuUsage[] },
    noop: { ids: [] as string[], lat: [] as number[], created: 0, completed: 0, cpu: [] as CpuUsage[] },
  };
  // Warm-up of both paths (bundles loaded, connections up); the no-op mirrors the snapshot workflow's shape.
  const warmN = quick ? 4 : concurrency;
  const warm = await realSide(warmN);
  noopWorkers.mirror({ primaryAsLocalActivity: await primaryAsLocalActivity(client, warm.ids[0]!) });
  await noopSide(warmN);
  for (let r = 0; r < rounds; r++) {
    for (const side of r % 2 === 0 ? (['real', 'noop'] as const) : (['noop', 'real'] as const)) {
      const c0 = cpuSnapshot();
      const res = side === 'real' ? await realSide(perRound) : await noopSide(perRound);
      acc[side].cpu.push(cpuDiff(c0, cpuSnapshot()));
      acc[side].ids.push(...res.ids);
      acc[side].lat.push(...res.lat);
      acc[side].created += res.createdSeconds;
      acc[side].completed += res.completedSeconds;
      log(`P4: round ${r + 1}/${rounds} ${side}: ${perRound} in ${round(res.completedSeconds, 2)} s`);
    }
  }

  const pick = (ids: string[]) => ids.filter((_, i) => i % Math.max(1, Math.floor(ids.length / 8)) === 0).slice(0, 8);
  const side = async (k: 'real' | 'noop'): Promise<P4Side> => {
    const a = acc[k];
    const { spans, events } = await sampleSpans(client, pick(a.ids));
    const problems: Record<string, number> = {};
    for (const id of a.ids) for (const [k, v] of Object.entries(await historyProblems(client, id))) problems[k] = (problems[k] ?? 0) + v;
    const cpu = sumCpu(a.cpu);
    return {
      snapshots: a.ids.length,
      createdPerSec: round(a.ids.length / a.created),
      completedPerSec: round(a.ids.length / a.completed),
      createdLatency: summarize(a.lat),
      spans,
      historyEvents: events,
      problems,
      cpu,
    };
  };
  const real = await side('real');
  const noop = await side('noop');
  const completedRatio = ratio(real.completedPerSec, noop.completedPerSec);
  const createdRatio = ratio(real.createdPerSec, noop.createdPerSec);
  return {
    concurrency,
    volumes: nVolumes,
    real,
    noop,
    completedRatio,
    createdRatio,
    notes: [
      `${total} snapshots per side in ${rounds} rounds (real/no-op order alternated), ${concurrency} requests in flight (closed loop), ${nVolumes} volumes of 64 MiB with 1 MiB written`,
      'real: SnapshotService.requestSnapshot (the code behind POST .../snapshots: DB transaction + Update-with-Start) with asyncBackup=true; no HTTP',
      `no-op: Client.workflow.executeUpdateWithStart of bench/noop-workflow.ts (same activity count and task-queue layout, activities return at once; create on primary as a ${noopWorkers.shape.primaryAsLocalActivity ? 'local activity, as the snapshot workflow in this tree does' : 'regular activity, as the snapshot workflow in this tree does'})`,
      'completed/s = snapshots / time until every workflow closed (backups included); created/s = snapshots / time until the last 201',
      `backup.pool.size ${poolSize} for both backup workers`,
    ],
    targets: [
      check('P4.completed-ratio', 'sustained snapshots/s (to BackedUp) / no-op workflows/s', completedRatio, '>=', 0.8),
      check('P4.created-ratio', 'created/s / no-op updates/s (time-to-created throughput)', createdRatio, '>=', 0.8, 'secondary figure'),
    ],
  };
}
