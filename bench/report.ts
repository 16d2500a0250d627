/** Renders a run's results as markdown tables (bench/results/<name>.md). */
import type { TargetCheck } from './context.js';
import type { P1Result } from './p1-time-to-created.js';
import type { P2Result } from './p2-vm-actions.js';
import type { P3Result, P3Row } from './p3-throughput.js';
import type { P4Result } from './p4-orchestration.js';
import type { P5Result } from './p5-incremental.js';
import type { P6Result } from './p6-scale.js';
import type { P7Result } from './p7-concurrency.js';
import type { ProfileSummary } from './lib/profile.js';
import { fmtBytes, GiB, MiB, round, type Summary } from './lib/stats.js';
import type { CpuUsage, MachineInfo } from './lib/system.js';

export interface BenchReport {
  generatedAt: string;
  mode: string;
  phases: string[];
  durationSeconds: number;
  stackStartSeconds: number;
  machine: MachineInfo;
  conditions: {
    loadAverageAtStart: number[];
    loadAverage1mDuringRun: { mean1m: number; max1m: number };
    note: string | null;
    httpConnectionsAccepted: number;
    logging: string;
    /** Which Temporal server and database (absent in runs from before the option: embedded). */
    server?: string;
  };
  targets: TargetCheck[];
  results: Record<string, unknown>;
  cpuByPhase: Record<string, CpuUsage>;
  profiles?: Record<string, ProfileSummary | null>;
  failures?: Record<string, string>;
}

const ms = (x: number) => (Number.isFinite(x) ? `${round(x, 1)}` : '—');
const dist = (s: Summary) => `${ms(s.p50)} / ${ms(s.p95)} / ${ms(s.p99)}`;
const mibps = (b: number) => `${round(b / MiB, 1)} MiB/s`;

function table(head: string[], rows: Array<Array<string | number>>): string {
  return [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

function cpuLine(c: CpuUsage): string {
  const parts = Object.entries(c.byComponent)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${v}`);
  return `${c.wallSeconds} s wall, machine busy ${c.machineBusySeconds} of ${c.machineCapacitySeconds} CPU-s: ${parts.join(', ')}, other processes on the machine ${c.otherProcesses}`;
}

export function renderMarkdown(r: BenchReport): string {
  const out: string[] = [];
  const m = r.machine;
  out.push(`# volsnap benchmark — ${r.mode} run, ${r.generatedAt}`);
  out.push('');
  out.push(
    `Machine: ${m.cpuCount} × ${m.cpuModel}${m.hypervisor ? ` (VM, ${m.hypervisor})` : ''}, ${round(m.memoryBytes / GiB, 1)} GiB RAM, ` +
      `${m.disk.device} ${m.disk.fsType} on ${m.disk.model ?? 'unknown disk'}${m.disk.rotational === null ? '' : m.disk.rotational ? ' (rotational)' : ' (non-rotational)'}, ` +
      `${round(m.disk.freeBytesAtStart / GiB, 1)} GiB free; ${m.kernel}; Node ${m.node}; ${m.qemuImg}.`,
  );
  out.push(
    `Conditions: load average ${r.conditions.loadAverageAtStart.join(' / ')} at start, 1-min mean ${r.conditions.loadAverage1mDuringRun.mean1m} (max ${r.conditions.loadAverage1mDuringRun.max1m}) during the run; ` +
      `${r.conditions.httpConnectionsAccepted} TCP connection(s) accepted by the API (keep-alive); ${r.conditions.logging}; stack start ${r.stackStartSeconds} s; whole run ${r.durationSeconds} s.` +
      (r.conditions.server ? ` Server: ${r.conditions.server}.` : '') +
      (r.conditions.note ? ` Note: ${r.conditions.note}` : ''),
  );
  out.push('');
  out.push('## Targets');
  out.push('');
  out.push(
    table(
      ['target', 'measured', 'limit', 'met'],
      r.targets.map((t) => [t.description + (t.note ? ` (${t.note})` : ''), String(t.value), `${t.comparison} ${t.limit}`, t.met ? 'yes' : '**no**']),
    ),
  );

  const p1 = r.results.p1 as P1Result | undefined;
  if (p1) {
    out.push('', '## P1 time-to-created (ms: p50 / p95 / p99)', '');
    out.push(
      table(
        ['allocated', 'async', 'sync', 'bare qemu-img snapshot -c', 'same, spawned from the API process', 'driver createSnapshot in the activity', 'async/sync p50', 'async/bare p50'],
        p1.sizes.map((s) => [
          s.label,
          `${dist(s.async)} (n=${s.async.n})`,
          `${dist(s.sync)} (n=${s.sync.n})`,
          dist(s.bareQemuImgSnapshot),
          dist(s.bareQemuImgSnapshotFromApiProcess),
          dist(s.driverCreateSnapshot),
          String(s.asyncOverSync),
          String(s.asyncOverBare),
        ]),
      ),
    );
    out.push('', 'Against the floor (issue 16: no-op Update-with-Start of the same shape + bare `qemu-img snapshot -c`, both measured in this run; target ≤ 1.3):', '');
    out.push(
      table(
        ['allocated', 'floor p50 ms', 'async p50 / floor', 'floor p99 ms', 'async p99 / floor'],
        p1.sizes
          .filter((s) => s.floor)
          .map((s) => [s.label, String(s.floor.p50), String(s.floor.asyncOverFloorP50), String(s.floor.p99), String(s.floor.asyncOverFloorP99)]),
      ),
    );
    out.push('', 'Where an async request\'s time goes (median ms; the workflow spans are server timestamps from its history):', '');
    const partKeys = [...new Set(p1.sizes.flatMap((s) => Object.keys(s.asyncBreakdown)))];
    out.push(
      table(
        ['part', ...p1.sizes.map((s) => s.label), 'no-op workflow (floor)'],
        partKeys.map((k) => [
          k,
          ...p1.sizes.map((s) => (s.asyncBreakdown[k] === undefined ? '' : String(s.asyncBreakdown[k]))),
          p1.noopBreakdown[k] === undefined ? '' : String(p1.noopBreakdown[k]),
        ]),
      ),
    );
    out.push(
      '',
      `Orchestration floor: Update-with-Start of the no-op workflow of the same shape (bench/noop-workflow.ts), straight through the Temporal client, sequential: ${dist(p1.noopUpdateWithStart)} ms (n=${p1.noopUpdateWithStart.n}). ` +
        `The snapshot workflow in this tree creates on primary ${p1.primaryAsLocalActivity ? 'in a local activity (inside the first workflow task)' : 'in a regular activity'}, and so did the no-op.`,
    );
    out.push('', `Async p50 ${p1.sizes[p1.sizes.length - 1]!.label} / ${p1.sizes[0]!.label}: ${p1.largestOverSmallestAsyncP50}.`);
    out.push('', `Each child process (every qemu-img call) blocks the event loop of the API/worker process while spawn() forks it: p50 ${ms(p1.spawnBlocking.spawnCallMs.p50)} ms, p95 ${ms(p1.spawnBlocking.spawnCallMs.p95)} ms at ${p1.spawnBlocking.rssMiB} MiB RSS (measured on \`true\` after the requests).`);
    out.push('', `Background: ${p1.background.description} Async snapshots at the end: ${JSON.stringify(p1.background.asyncSnapshotsByState)}.`);
    out.push('', ...p1.notes.map((n) => `- ${n}`));
  }

  const p2 = r.results.p2 as P2Result | undefined;
  if (p2) {
    out.push('', `## P2 VM actions during ${p2.backups} backups (ms: p50 / p95 / p99)`, '');
    out.push(
      table(
        ['phase', 'n', 'p50 / p95 / p99', 'max'],
        [
          ['no backup (before)', p2.baselineBefore.n, dist(p2.baselineBefore), ms(p2.baselineBefore.max)],
          [`${p2.backups} backups at ${mibps(p2.rateLimitBytesPerSec)} each`, p2.duringBackups.n, dist(p2.duringBackups), ms(p2.duringBackups.max)],
          ['no backup (after)', p2.baselineAfter.n, dist(p2.baselineAfter), ms(p2.baselineAfter.max)],
          ['no backup (pooled)', p2.baseline.n, dist(p2.baseline), ms(p2.baseline.max)],
        ],
      ),
    );
    out.push('', `Ratios during/without: p50 ${p2.p50Ratio}, p95 ${p2.p95Ratio}, p99 ${p2.p99Ratio}.`, '');
    out.push(table(['action', 'no backup p50 / p95 / p99', 'during backups p50 / p95 / p99'], Object.entries(p2.byAction).map(([a, v]) => [a, dist(v.baseline), dist(v.duringBackups)])));
    out.push('', `CPU during backups: ${cpuLine(p2.cpuDuringBackups)}.`, '', `CPU baseline: ${cpuLine(p2.cpuBaselineBefore)}.`);
    out.push('', ...p2.notes.map((n) => `- ${n}`));
  }

  const p3 = r.results.p3 as P3Result | undefined;
  if (p3) {
    const stages = (x: P3Row) => (x.stages ? Object.entries(x.stages).map(([k, v]) => `${k} ${v}`).join(', ') : '');
    out.push('', `## P3 backup throughput (${fmtBytes(p3.allocatedBytes)} allocated)`, '');
    out.push(
      table(
        ['durable path (end to end)', 'runs', 'median s', 'throughput', 'vs cp+sync', 'stages (median s)'],
        [p3.endToEnd.cp, p3.endToEnd.driver, p3.endToEnd.proposed].map((x) => [x.name, String(x.runs.length), String(x.medianSeconds), mibps(x.bytesPerSec), String(x.ratioToCp), stages(x)]),
      ),
    );
    out.push('', 'Copy stage by qemu-img flags (convert, then fsync of file and directory):', '');
    out.push(table(['flags', 'runs', 'median s', 'throughput', 'stages (median s)'], p3.copyStage.map((x) => [x.name, String(x.runs.length), String(x.medianSeconds), mibps(x.bytesPerSec), stages(x)])));
    out.push('', 'Verify stage (sha256 of the finished file, in the page cache):', '');
    out.push(table(['sha256', 'runs', 'median s', 'throughput', 'CPU-s (median)'], p3.verifyStage.map((x) => [x.name, String(x.runs.length), String(x.medianSeconds), mibps(x.bytesPerSec), String(x.cpuSeconds ?? '')])));
    out.push(
      '',
      `Fastest copy-stage flags: **${p3.fastestCopyFlags.name}** (${p3.fastestCopyFlags.vsDriverFlags}× the driver's flags). Fastest verify: **${p3.fastestVerify.name}** (${p3.fastestVerify.vsDriver}× the driver's).`,
    );
    out.push('', ...p3.notes.map((n) => `- ${n}`));
  }

  const p4 = r.results.p4 as P4Result | undefined;
  if (p4) {
    out.push('', '## P4 orchestration overhead', '');
    out.push(
      table(
        ['', 'snapshots', 'completed/s', 'created/s', 'created latency p50 / p95 / p99 ms', 'history events'],
        [
          ['volsnap (snapshot service)', p4.real.snapshots, p4.real.completedPerSec, p4.real.createdPerSec, dist(p4.real.createdLatency), p4.real.historyEvents],
          ['no-op workflow, same shape', p4.noop.snapshots, p4.noop.completedPerSec, p4.noop.createdPerSec, dist(p4.noop.createdLatency), p4.noop.historyEvents],
          ['ratio', '', String(p4.completedRatio), String(p4.createdRatio), '', ''],
        ],
      ),
    );
    const keys = [...new Set([...Object.keys(p4.real.spans), ...Object.keys(p4.noop.spans)])];
    const norm = (k: string) => k.replace(/^noopCreateOnPrimary/, 'createSnapshotOnPrimary').replace(/^noopBackup/, 'backupSnapshotToSecondary');
    const merged = new Map<string, { real?: number; noop?: number }>();
    for (const k of keys) {
      const e = merged.get(norm(k)) ?? {};
      if (k in p4.real.spans) e.real = p4.real.spans[k];
      if (k in p4.noop.spans) e.noop = p4.noop.spans[k];
      merged.set(norm(k), e);
    }
    out.push('', 'Timing spans from sampled workflow histories (median ms from WorkflowExecutionStarted unless noted; no-op activities mapped to the real names):', '');
    out.push(table(['span', 'volsnap', 'no-op'], [...merged].map(([k, v]) => [k, v.real === undefined ? '' : String(v.real), v.noop === undefined ? '' : String(v.noop)])));
    const probs = (x: Record<string, number>) => (Object.keys(x).length ? Object.entries(x).map(([k, v]) => `${k} × ${v}`).join(', ') : 'none');
    out.push('', `Failed or timed-out tasks in the measured workflows (each costs a retry interval): volsnap ${probs(p4.real.problems)}; no-op ${probs(p4.noop.problems)}.`);
    out.push('', `CPU, volsnap side: ${cpuLine(p4.real.cpu)}.`, '', `CPU, no-op side: ${cpuLine(p4.noop.cpu)}.`);
    out.push('', ...p4.notes.map((n) => `- ${n}`));
  }

  const p5 = r.results.p5 as P5Result | undefined;
  if (p5) {
    out.push('', `## P5 incremental backups (${fmtBytes(p5.allocatedBytes)} allocated)`, '');
    out.push(`First backup: ${p5.first.kind}, ${fmtBytes(p5.first.bytesWritten)} in ${p5.first.seconds} s.`, '');
    out.push(
      table(
        ['change', 'changed', 'backup', 'chain', 'bytes written', '÷ changed', 'read from store', 'incremental s', 'full of the same snapshot', 'full s', 'time ÷ full'],
        p5.steps.map((x) => [
          x.label,
          fmtBytes(x.changedBytes),
          x.kind,
          String(x.chainLength),
          fmtBytes(x.bytesWritten),
          String(x.bytesRatioToChanged),
          x.storeReadBytes == null ? 'n/a' : fmtBytes(x.storeReadBytes),
          String(x.incrementalSeconds),
          fmtBytes(x.fullBytes),
          String(x.fullSeconds),
          String(x.timeRatioToFull),
        ]),
      ),
    );
    out.push(
      '',
      `Restore (new volume over HTTP) of the 16th delta (chain of ${p5.restore.chainLength} files): ${p5.restore.deltaSeconds} s, byte-exact: ${p5.restore.identical}; ` +
        `of the full backup: ${p5.restore.fullSeconds} s (ratio ${p5.restore.ratio}).`,
    );
    out.push(
      '',
      `Acceptance: ${fmtBytes(p5.acceptance.volumeBytes)} volume, ${fmtBytes(p5.acceptance.changedBytes)} changed: second backup ${p5.acceptance.kind}, ${fmtBytes(p5.acceptance.bytesWritten)} written; ` +
        `a volume from it after its primary copy was deleted is byte-exact: ${p5.acceptance.identicalAfterPrimaryDeleted}.`,
    );
    out.push('', ...p5.notes.map((n) => `- ${n}`));
  }

  const p6 = r.results.p6 as P6Result | undefined;
  if (p6) {
    const sz = p6.sizes;
    const k = (n: number) => (n >= 1000 ? `${n / 1000}k` : String(n));
    out.push('', `## P6 scale curves (ms: p50 / p99 at ${sz.map((s) => k(s.snapshots)).join(' / ')} seeded snapshots)`, '');
    out.push(
      table(
        ['request', ...sz.map((s) => `${k(s.snapshots)} (n)`), `growth p50 ×${p6.sizeRatio} rows`, 'growth p99', `SQL ms (EXPLAIN ANALYZE) ${sz.map((s) => k(s.snapshots)).join(' / ')}`, 'growth SQL', 'big-table seq scans'],
        Object.entries(p6.endpoints).map(([key, label]) => [
          label,
          ...sz.map((s) => `${ms(s.latency[key]!.p50)} / ${ms(s.latency[key]!.p99)} (${s.latency[key]!.n})`),
          String(p6.growth[key]!.p50),
          String(p6.growth[key]!.p99),
          sz.map((s) => String(s.sqlMs?.[key] ?? '')).join(' / '),
          String(p6.growth[key]!.sql ?? ''),
          [...new Set(sz.flatMap((s) => (s.plans[key] ?? []).flatMap((p) => p.seqScans.map((t) => `${t} at ${k(s.snapshots)}`))))].join(', ') || 'none',
        ]),
      ),
    );
    out.push(
      '',
      table(
        ['seeded snapshots', 'events (table)', 'store refs (table)', 'seed + ANALYZE s', 'GET /snapshots without limit: rows, next page', 'SSE backlog events', 'first GC after the step'],
        sz.map((s) => [
          k(s.snapshots),
          s.events,
          s.storeRefs,
          s.seedSeconds,
          `${s.unlimitedList.rows}, ${s.unlimitedList.nextCursor ? 'X-Next-Cursor' : 'none'}`,
          s.sseBacklogEvents,
          `${ms(s.gcFirst.ms)} ms, ${s.gcFirst.destroyed} Error snapshots destroyed, ${s.gcFirst.failures} failures`,
        ]),
      ),
    );
    out.push('', `Seeded rows removed at the end: ${p6.cleanup.snapshots} snapshots, ${p6.cleanup.events} events.`);
    const last = sz[sz.length - 1]!;
    out.push('', `Plans at ${k(last.snapshots)} (the measured requests' read queries, EXPLAIN ANALYZE; full plans in the JSON):`, '');
    for (const [key, plans] of Object.entries(last.plans)) {
      for (const p of plans) {
        const top = p.plan.filter((l) => /Scan|Sort|Join|Limit|Nested Loop|Execution Time/.test(l)).map((l) => l.trim()).slice(0, 6);
        out.push(`- ${key}: \`${p.sql.slice(0, 110)}…\` → ${top.join('; ')}`);
      }
    }
    out.push('', ...p6.notes.map((n) => `- ${n}`));
  }

  const p7 = r.results.p7 as P7Result | undefined;
  if (p7) {
    const base = p7.levels[0]!;
    out.push('', `## P7 concurrency: async time-to-created with N clients in flight (against ${base.clients} client, same run)`, '');
    out.push(
      table(
        ['clients', 'requests', 'p50 ms', 'p99 ms', 'p50 ÷ 1 client', 'p99 ÷ 1 client', 'created/s', 'created/s ÷ 1 client', 'park wait p50 ms', 'open conns (max)', 'pg pool waiters (max / share of samples)', 'main thread % of a core', 'event loop util.', 'machine busy %', 'limiting (closest to saturation)'],
        p7.levels.map((l) => [
          l.clients,
          l.requests,
          ms(l.latency.p50),
          ms(l.latency.p99),
          String(l.p50Ratio),
          String(l.p99Ratio),
          String(l.createdPerSec),
          String(l.throughputRatio),
          ms(l.parkWait.p50),
          l.httpConnectionsOpenMax ?? '—',
          `${l.dbPool.waitingMax} / ${round(l.dbPool.samplesWithWaiters * 100, 0)} %`,
          `${round(l.threads.mainThreadShareOfOneCore * 100, 0)} %`,
          `${round(l.threads.eventLoopUtilization * 100, 0)} %`,
          `${round((l.cpu.machineBusySeconds / l.cpu.machineCapacitySeconds) * 100, 0)} %`,
          `${l.limiting.resource} (${round(l.limiting.utilization * 100, 0)} %)`,
        ]),
      ),
    );
    const comps = [...new Set(p7.levels.flatMap((l) => Object.keys(l.cpuMsPerRequest)))];
    out.push('', 'CPU by component: CPU-ms per request, and in brackets % of the machine (wall × cores) during the level:', '');
    out.push(
      table(
        ['component', ...p7.levels.map((l) => `${l.clients} client${l.clients > 1 ? 's' : ''}`)],
        [
          ...comps.map((c) => [c, ...p7.levels.map((l) => (l.cpuMsPerRequest[c] === undefined ? '' : `${l.cpuMsPerRequest[c]} (${l.cpuShareOfMachinePct[c]} %)`))]),
          ['**the stack in all** (other processes excluded)', ...p7.levels.map((l) => `**${l.stackCpuMsPerRequest}**`)],
          ['created/s the CPU allows at that cost: all cores / what other processes left', ...p7.levels.map((l) => `${l.cpuCeilingPerSec.allCores} / ${l.cpuCeilingPerSec.leftByOthers}`)],
          ['created/s measured', ...p7.levels.map((l) => String(l.createdPerSec))],
        ],
      ),
    );
    const d = p7.degradation;
    out.push(
      '',
      `**Degrades at: ${d.degradesAt === null ? `not within ${p7.levels[p7.levels.length - 1]!.clients} clients` : `${d.degradesAt} clients`}** ` +
        `(latency knee: ${d.latencyKnee ?? 'none'}; throughput knee: ${d.throughputKnee ?? 'none'}). **Limiting resource: ${d.limitingResource}.**`,
      '',
      `Evidence: ${d.evidence}.`,
      '',
      `Definition: ${d.definition}.`,
      '',
      'Each round on its own (p50 ms / created/s / other processes % of the machine), to show drift:',
      '',
      table(
        ['round', 'order', ...p7.levels.map((l) => `${l.clients}`)],
        p7.rounds.map((x, i) => [
          i + 1,
          x.order.join(' → '),
          ...p7.levels.map((l) => `${ms(x.p50Ms[l.clients] ?? Number.NaN)} / ${x.createdPerSec[l.clients] ?? '—'} / ${x.otherProcessesPct[l.clients] ?? '—'} %`),
        ]),
      ),
    );
    out.push('', ...p7.notes.map((n) => `- ${n}`));
  }

  out.push('', '## CPU by phase (CPU-seconds)', '');
  out.push(...Object.entries(r.cpuByPhase).map(([p, c]) => `- ${p.toUpperCase()}: ${cpuLine(c)}`));
  if (r.profiles) {
    for (const [p, prof] of Object.entries(r.profiles)) {
      if (!prof) continue;
      out.push('', `### ${p.toUpperCase()} Node main-thread profile (${prof.sampledMs} ms sampled, ${prof.file})`, '');
      out.push(table(['function', 'self ms', 'share'], prof.top.map((t) => [`\`${t.fn}\``, t.selfMs, `${round(t.share * 100, 1)} %`])));
    }
  }
  if (r.failures) out.push('', '## Failures', '', ...Object.entries(r.failures).map(([p, e]) => `- ${p}: ${e.split('\n')[0]}`));
  out.push('');
  return out.join('\n');
}
