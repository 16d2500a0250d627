/**
 * P7 concurrency (issue #16, item 4): async time-to-created (POST /api/v1/volumes/{id}/snapshots with
 * asyncBackup=true, over HTTP, as the ordinary user) with N clients in flight, N = 1, 2, 4, 8, 16, 32 (quick:
 * 1, 8, 32), against the quiet single-client figure measured in the same run; the point where it degrades and
 * the resource that limits it, from CPU accounting by component and thread, the DB pool and open connections.
 *
 * Each client owns one volume and loops sequentially: request, then wait until that snapshot's background
 * backup attempt has parked (the P1 approach, bench/lib/park.ts), then the next request.
 */
import os from 'node:os';
import { check, type BenchContext, type TargetCheck } from './context.js';
import { fillImage } from './lib/images.js';
import { ParkWatcher, parkBackups } from './lib/park.js';
import { MiB, ratio, round, summarize, type Summary } from './lib/stats.js';
import { cpuDiff, cpuSnapshot, sumCpu, type CpuUsage } from './lib/system.js';
import { threadDiff, threadSnapshot, type ThreadUsage } from './lib/threads.js';

export interface P7Level {
  clients: number;
  requestsPerClient: number;
  requests: number;
  wallSeconds: number;
  /** Time-to-created, ms, client side (fetch start to body read). */
  latency: Summary;
  p50Ratio: number;
  p99Ratio: number;
  /** 201s per second over the level (closed loop: each client waits for its snapshot to park between requests). */
  createdPerSec: number;
  throughputRatio: number;
  /** 201 → the background attempt parked (the client's think time), ms. */
  parkWait: Summary;
  /** Open TCP connections at the API, sampled every 25 ms: the most seen (N means N really concurrent). */
  httpConnectionsOpenMax: number | null;
  httpConnectionsAccepted: number | null;
  /** The stack's pg pool (DATABASE_POOL_MAX), sampled every 25 ms. */
  dbPool: { max: number; totalMax: number; waitingMax: number; waitingMean: number; samplesWithWaiters: number };
  cpu: CpuUsage;
  threads: ThreadUsage;
  /** CPU-ms per request by component (the byComponent keys of cpu, plus the main thread and other process threads). */
  cpuMsPerRequest: Record<string, number>;
  /** Share of the machine's capacity (wall × cores) by component, %. */
  cpuShareOfMachinePct: Record<string, number>;
  /** CPU-ms per request of the whole stack (Node process, its children, PostgreSQL, Temporal), other processes excluded. */
  stackCpuMsPerRequest: number;
  /**
   * created/s the CPU allows at that cost per request: on all cores (machine to ourselves), and on what the other
   * processes on the machine left during the level.
   */
  cpuCeilingPerSec: { allCores: number; leftByOthers: number };
  limiting: { resource: string; utilization: number; evidence: string };
}

export interface P7Result {
  volumeBytes: number;
  writtenBytes: number;
  levels: P7Level[];
  /** Each round on its own (levels ascending, then descending): how far the figures drifted during the phase. */
  rounds: Array<{ order: number[]; p50Ms: Record<number, number>; createdPerSec: Record<number, number>; otherProcessesPct: Record<number, number> }>;
  degradation: {
    definition: string;
    /** First N where p50 > 2 × p50 at N = 1. */
    latencyKnee: number | null;
    /** First N where throughput < 1.1 × the previous level's. */
    throughputKnee: number | null;
    degradesAt: number | null;
    limitingResource: string;
    evidence: string;
  };
  notes: string[];
  targets: TargetCheck[];
}

const MAIN = 'node main thread (event loop: API, activities, Temporal client, bench client)';
const OTHER_THREADS = 'node other threads (workflow threads, SDK core, libuv, GC)';

function sumThreads(xs: ThreadUsage[], walls: number[]): ThreadUsage {
  const wall = walls.reduce((a, b) => a + b, 0);
  const main = xs.reduce((a, t) => a + t.mainThreadSeconds, 0);
  return {
    mainThreadSeconds: round(main),
    otherThreadsSeconds: round(xs.reduce((a, t) => a + t.otherThreadsSeconds, 0)),
    mainThreadShareOfOneCore: round(main / wall, 3),
    eventLoopUtilization: round(xs.reduce((a, t, i) => a + t.eventLoopUtilization * walls[i]!, 0) / wall, 3),
  };
}

/** Samples the DB pool and open connections while a level runs. */
function sampler(ctx: BenchContext) {
  const pool = ctx.stack.pool;
  let n = 0;
  let withWaiters = 0;
  let waitingSum = 0;
  let waitingMax = 0;
  let totalMax = 0;
  let openMax = 0;
  const tick = () => {
    n++;
    waitingSum += pool.waitingCount;
    waitingMax = Math.max(waitingMax, pool.waitingCount);
    if (pool.waitingCount > 0) withWaiters++;
    totalMax = Math.max(totalMax, pool.totalCount);
    openMax = Math.max(openMax, ctx.httpConnections?.().open ?? 0);
  };
  const timer = setInterval(tick, 25);
  return {
    stop() {
      clearInterval(timer);
      tick();
      return {
        dbPool: { max: ctx.stack.env.DATABASE_POOL_MAX, totalMax, waitingMax, waitingMean: round(waitingSum / n), samplesWithWaiters: round(withWaiters / n, 3) },
        openMax: ctx.httpConnections ? openMax : null,
      };
    },
  };
}

/** Names the resource closest to saturation in a level, with the figures behind it. */
function limitingResource(l: Omit<P7Level, 'limiting'>, cores: number): P7Level['limiting'] {
  const wall = l.cpu.wallSeconds;
  const comp = (k: string) => l.cpu.byComponent[k] ?? 0;
  const candidates: Array<{ resource: string; utilization: number; detail: string }> = [
    {
      resource: MAIN,
      utilization: l.threads.mainThreadShareOfOneCore,
      detail: `main thread ${round(l.threads.mainThreadShareOfOneCore * 100, 0)} % of one core, event-loop utilization ${round(l.threads.eventLoopUtilization * 100, 0)} %`,
    },
    {
      resource: `machine CPU (${cores} cores)`,
      utilization: l.cpu.machineBusySeconds / l.cpu.machineCapacitySeconds,
      detail: `machine busy ${round((l.cpu.machineBusySeconds / l.cpu.machineCapacitySeconds) * 100, 0)} % of ${cores} cores (other processes on the machine ${round((l.cpu.otherProcesses / l.cpu.machineCapacitySeconds) * 100, 0)} %)`,
    },
    {
      resource: 'Temporal dev server',
      utilization: comp('temporal dev server') / wall / cores,
      detail: `Temporal dev server ${round((comp('temporal dev server') / wall) * 100, 0)} % of one core`,
    },
    {
      resource: 'PostgreSQL',
      utilization: comp('postgres') / wall / cores,
      detail: `PostgreSQL ${round((comp('postgres') / wall) * 100, 0)} % of one core`,
    },
    {
      resource: `PostgreSQL connection pool (DATABASE_POOL_MAX ${l.dbPool.max})`,
      utilization: l.dbPool.samplesWithWaiters,
      detail: `pg pool had waiters in ${round(l.dbPool.samplesWithWaiters * 100, 0)} % of samples (max ${l.dbPool.waitingMax})`,
    },
  ];
  const best = [...candidates].sort((a, b) => b.utilization - a.utilization)[0]!;
  const ours = Object.entries(l.cpuMsPerRequest).filter(([k]) => k !== 'other processes on the machine').sort((a, b) => b[1] - a[1]);
  const largest = ours[0] ? `${ours[0][0]} ${ours[0][1]} of ${l.stackCpuMsPerRequest} CPU-ms per request` : '';
  const resource = best.resource.startsWith('machine CPU') && ours[0] ? `${best.resource}; largest consumer in the stack: ${ours[0][0]}` : best.resource;
  const evidence = [
    ...candidates.map((c) => c.detail),
    `the stack used ${l.stackCpuMsPerRequest} CPU-ms per request (largest: ${largest}): the CPU allows ${l.cpuCeilingPerSec.allCores}/s on ${cores} free cores, ` +
      `${l.cpuCeilingPerSec.leftByOthers}/s on what the other processes left; measured ${l.createdPerSec}/s`,
  ].join('; ');
  return { resource, utilization: round(best.utilization, 3), evidence };
}

export async function runP7(ctx: BenchContext): Promise<P7Result> {
  const { stack, user, quick, log } = ctx;
  const levels = quick ? [1, 8, 32] : [1, 2, 4, 8, 16, 32];
  // Requests per client: `perClient`, at least `minTotal` per level (a stable quiet figure), at most `cap` per level.
  const perClient = quick ? 5 : 10;
  const minTotal = quick ? 20 : 40;
  const cap = quick ? 96 : 160;
  const perClientAt = (n: number) => Math.max(Math.ceil(minTotal / n), Math.max(1, Math.min(perClient, Math.floor(cap / n))));
  const rounds = 2;
  const maxClients = Math.max(...levels);
  const volumeBytes = 64 * MiB;
  const writtenBytes = 8 * MiB;
  const cores = os.cpus().length;

  const vols: string[] = [];
  for (let i = 0; i < maxClients; i++) {
    const v = await user.expect([201], 'POST', '/api/v1/volumes', { name: `p7-${i}`, sizeBytes: volumeBytes });
    // Ordinary users are not shown host paths (api/redact.ts): read as admin.
    await fillImage(await ctx.volumePath(v.body.id), writtenBytes);
    vols.push(v.body.id);
  }
  log(`P7: ${maxClients} volumes of 64 MiB with 8 MiB written`);

  const restore = await parkBackups(ctx, 'p7-image-store-blocker');
  const watcher = new ParkWatcher(stack.pool);
  const snapshotOnce = async (volumeId: string) => {
    const r = await user.expect([201], 'POST', `/api/v1/volumes/${volumeId}/snapshots`, { asyncBackup: true });
    if (!['CreatedOnPrimary', 'BackingUp'].includes(r.body.state)) throw new Error(`async snapshot answered ${r.body.state}`);
    const t = performance.now();
    await watcher.parked(r.body.id);
    return { ms: r.ms, parkMs: performance.now() - t };
  };

  type Raw = { lat: number[]; park: number[]; cpu: CpuUsage; threads: ThreadUsage; sampled: ReturnType<ReturnType<typeof sampler>['stop']>; accepted: number | null };
  const runLevel = async (n: number, requestsPerClient: number): Promise<Raw> => {
    // Warm-up: one request per client, all at once (connections opened, the volumes' first snapshot): not measured.
    await Promise.all(vols.slice(0, n).map((v) => snapshotOnce(v)));
    const conn0 = ctx.httpConnections?.().accepted ?? 0;
    const s = sampler(ctx);
    const c0 = cpuSnapshot();
    const t0 = threadSnapshot();
    const lat: number[] = [];
    const park: number[] = [];
    await Promise.all(
      vols.slice(0, n).map(async (v) => {
        for (let k = 0; k < requestsPerClient; k++) {
          const r = await snapshotOnce(v);
          lat.push(r.ms);
          park.push(r.parkMs);
        }
      }),
    );
    const threads = threadDiff(t0, threadSnapshot());
    const cpu = cpuDiff(c0, cpuSnapshot());
    const sampled = s.stop();
    return { lat, park, cpu, threads, sampled, accepted: ctx.httpConnections ? ctx.httpConnections().accepted - conn0 : null };
  };

  // Levels run in rounds, ascending then descending (ABBA), and each level's samples are pooled over the rounds:
  // a drift of the machine's other load during the phase then weighs on every level alike.
  const raws = new Map<number, Raw[]>(levels.map((n) => [n, []]));
  const roundsOut: P7Result['rounds'] = [];
  try {
    // Warm-up of the whole path (JIT, pools, workflow cache) on volume 0.
    for (let i = 0; i < 5; i++) await snapshotOnce(vols[0]!);
    for (let round_ = 0; round_ < rounds; round_++) {
      const order = round_ % 2 === 0 ? levels : [...levels].reverse();
      const rr: P7Result['rounds'][number] = { order, p50Ms: {}, createdPerSec: {}, otherProcessesPct: {} };
      for (const n of order) {
        const rpc = Math.ceil(perClientAt(n) / rounds);
        const r = await runLevel(n, rpc);
        raws.get(n)!.push(r);
        const p50 = summarize(r.lat).p50;
        rr.p50Ms[n] = p50;
        rr.createdPerSec[n] = round(r.lat.length / r.cpu.wallSeconds, 2);
        rr.otherProcessesPct[n] = round((r.cpu.otherProcesses / r.cpu.machineCapacitySeconds) * 100, 0);
        log(
          `P7: round ${round_ + 1}/${rounds}, ${n} client(s) × ${rpc}: p50 ${p50} ms, ${rr.createdPerSec[n]}/s, main thread ${round(r.threads.mainThreadShareOfOneCore * 100, 0)} % of a core, ` +
            `machine ${round((r.cpu.machineBusySeconds / r.cpu.machineCapacitySeconds) * 100, 0)} % busy (other processes ${rr.otherProcessesPct[n]} %)`,
        );
      }
      roundsOut.push(rr);
    }
  } finally {
    await restore();
  }

  const out: P7Level[] = [];
  for (const n of levels) {
    const rs = raws.get(n)!;
    const lat = rs.flatMap((r) => r.lat);
    const requests = lat.length;
    const cpu = sumCpu(rs.map((r) => r.cpu));
    const threads = sumThreads(rs.map((r) => r.threads), rs.map((r) => r.cpu.wallSeconds));
    const latency = summarize(lat);
    const createdPerSec = round(requests / cpu.wallSeconds, 2);
    const base = out[0];
    const cpuMsPerRequest: Record<string, number> = {
      [MAIN]: round((threads.mainThreadSeconds * 1000) / requests, 1),
      [OTHER_THREADS]: round((threads.otherThreadsSeconds * 1000) / requests, 1),
    };
    const cpuShareOfMachinePct: Record<string, number> = {
      [MAIN]: round((threads.mainThreadSeconds / cpu.machineCapacitySeconds) * 100, 1),
      [OTHER_THREADS]: round((threads.otherThreadsSeconds / cpu.machineCapacitySeconds) * 100, 1),
    };
    for (const [k, v] of Object.entries(cpu.byComponent)) {
      if (k.startsWith('node (')) continue; // split into main / other threads above
      cpuMsPerRequest[k] = round((v * 1000) / requests, 1);
      cpuShareOfMachinePct[k] = round((v / cpu.machineCapacitySeconds) * 100, 1);
    }
    const stackCpuMsPerRequest = round((Object.values(cpu.byComponent).reduce((a, v) => a + v, 0) * 1000) / requests, 1);
    const cpuCeilingPerSec = {
      allCores: round((cores * 1000) / stackCpuMsPerRequest, 1),
      leftByOthers: round((((cpu.machineCapacitySeconds - cpu.otherProcesses) / cpu.wallSeconds) * 1000) / stackCpuMsPerRequest, 1),
    };
    cpuMsPerRequest['other processes on the machine'] = round((cpu.otherProcesses * 1000) / requests, 1);
    cpuShareOfMachinePct['other processes on the machine'] = round((cpu.otherProcesses / cpu.machineCapacitySeconds) * 100, 1);
    const samples = rs.map((r) => r.sampled);
    const level: Omit<P7Level, 'limiting'> = {
      clients: n,
      requestsPerClient: requests / n,
      requests,
      wallSeconds: cpu.wallSeconds,
      latency,
      p50Ratio: base ? ratio(latency.p50, base.latency.p50) : 1,
      p99Ratio: base ? ratio(latency.p99, base.latency.p99) : 1,
      createdPerSec,
      throughputRatio: base ? ratio(createdPerSec, base.createdPerSec) : 1,
      parkWait: summarize(rs.flatMap((r) => r.park)),
      httpConnectionsOpenMax: samples.every((x) => x.openMax === null) ? null : Math.max(...samples.map((x) => x.openMax ?? 0)),
      httpConnectionsAccepted: rs.every((r) => r.accepted === null) ? null : rs.reduce((a, r) => a + (r.accepted ?? 0), 0),
      dbPool: {
        max: samples[0]!.dbPool.max,
        totalMax: Math.max(...samples.map((x) => x.dbPool.totalMax)),
        waitingMax: Math.max(...samples.map((x) => x.dbPool.waitingMax)),
        waitingMean: round(samples.reduce((a, x) => a + x.dbPool.waitingMean, 0) / samples.length),
        samplesWithWaiters: round(samples.reduce((a, x) => a + x.dbPool.samplesWithWaiters, 0) / samples.length, 3),
      },
      cpu,
      threads,
      cpuMsPerRequest,
      cpuShareOfMachinePct,
      stackCpuMsPerRequest,
      cpuCeilingPerSec,
    };
    out.push({ ...level, limiting: limitingResource(level, cores) });
  }

  const base = out[0]!;
  const latencyKnee = out.find((l) => l.clients > 1 && l.latency.p50 > 2 * base.latency.p50)?.clients ?? null;
  const throughputKnee = out.find((l, i) => i > 0 && l.createdPerSec < 1.1 * out[i - 1]!.createdPerSec)?.clients ?? null;
  const knees = [latencyKnee, throughputKnee].filter((x): x is number => x !== null);
  const degradesAt = knees.length ? Math.min(...knees) : null;
  const at = out.find((l) => l.clients === degradesAt) ?? out[out.length - 1]!;
  const top = out[out.length - 1]!;
  const evidence =
    `at ${at.clients} clients: ${at.limiting.evidence}; CPU-ms per request ${JSON.stringify(at.cpuMsPerRequest)}` +
    (top !== at ? `; at ${top.clients} clients: ${top.limiting.evidence}` : '');

  const byN = (n: number) => out.find((l) => l.clients === n);
  const targets: TargetCheck[] = [];
  const info = 'informative: no target in issue #16; 2 = the degradation threshold';
  for (const n of [8, 32]) {
    const l = byN(n);
    if (!l) continue;
    targets.push(check(`P7.p50.${n}v1`, `time-to-created p50 with ${n} clients / 1 client`, l.p50Ratio, '<=', 2, info));
    targets.push(check(`P7.p99.${n}v1`, `time-to-created p99 with ${n} clients / 1 client`, l.p99Ratio, '<=', 2, info));
  }
  const l8 = byN(8);
  if (l8 && top.clients > 8) {
    targets.push(check('P7.throughput.32v8', `created/s with ${top.clients} clients / with 8`, ratio(top.createdPerSec, l8.createdPerSec), '>=', 1.1, 'informative: whether throughput still grows past 8 clients'));
  }

  return {
    volumeBytes,
    writtenBytes,
    levels: out,
    rounds: roundsOut,
    degradation: {
      definition:
        'degrades at the first N where p50 > 2 × the single-client p50 (latency knee) or created/s grows by less than 10 % over the previous level (throughput knee), whichever comes first; ' +
        'the limiting resource is the one closest to saturation at that level: the Node main thread (share of one core), the machine\'s cores, the Temporal dev server or PostgreSQL (share of all cores), or the pg pool (share of samples with waiters)',
      latencyKnee,
      throughputKnee,
      degradesAt,
      limitingResource: at.limiting.resource,
      evidence,
    },
    notes: [
      `levels ${levels.join(', ')} clients; ${perClient} requests per client, at least ${minTotal} and at most ${cap} per level (${out.map((l) => `${l.clients}×${l.requestsPerClient}`).join(', ')}), in ${rounds} rounds (levels ascending, then descending) pooled per level, so that a drift of the machine's other load weighs on every level alike; each round's figures are in results.p7.rounds`,
      `each client owns one volume (${maxClients} volumes of 64 MiB, 8 MiB written by qemu-io) and loops: POST .../snapshots asyncBackup=true, then waits until that snapshot's first backup attempt has parked (image store unusable, backup.max.attempts=2, retry in 1 h; one shared 10 ms poller, one query per tick whatever N), then the next request`,
      'one unmeasured warm-up request per client before each level in each round (opens the connections), 5 on volume 0 before the first',
      'latency = fetch() start to the body read; Node fetch (undici) opens a connection per request in flight, the open-connection count sampled at the API shows N really concurrent',
      'created/s = measured 201s / wall time of the level; the park wait is each client\'s think time, so created/s = N / (latency + park wait) until something saturates',
      'the bench client (fetch, JSON) runs on the same event loop as the API and the activities: its cost is in the main-thread figures',
      'CPU: components from /proc as in every phase; the Node process split into its main thread (/proc/self/task/<pid>) and its other threads; event-loop utilization from perf_hooks',
    ],
    targets,
  };
}
