/**
 * volsnap benchmarks (`npm run bench`, `npm run bench -- --quick`): starts the embedded stack in-process
 * (PostgreSQL, Temporal dev server, workers), serves the HTTP API on a free port, measures P1–P5 and P7 side by
 * side over real HTTP / the real driver, and writes bench/results/<name>.json and .md. See bench/README.md.
 *
 * Options: --quick (under 2 minutes, smaller images and fewer samples), --only p1,p3 (a subset),
 * --out <name> (default latest, or latest-quick with --quick), --note "<text>" (recorded in the results),
 * --profile (CPU profile of the Node main thread per phase into bench/results/profiles/),
 * --temporal-address host:port --database-url postgres://… (against a running `npm run cluster` started with
 * ADMIN_API_KEY=bench-admin-key, instead of the embedded stack).
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import os, { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createApp } from '../api/app.js';
import { listen } from '../api/server.js';
import { silentLogger } from '../observability/logger.js';
import { startTestStack, type TestStack } from '../harness/stack.js';
import { installTemporalRuntime } from '../app/runtime.js';
import type { BenchContext, TargetCheck } from './context.js';
import { HttpClient } from './lib/http.js';
import { bundleNoopWorkflow, startNoopWorkers, type NoopWorkers } from './lib/noop.js';
import { PhaseProfiler, type ProfileSummary } from './lib/profile.js';
import { GiB, round } from './lib/stats.js';
import { cpuDiff, cpuSnapshot, freeBytes, loadSampler, machineInfo, type CpuUsage } from './lib/system.js';
import { runP1 } from './p1-time-to-created.js';
import { runP2 } from './p2-vm-actions.js';
import { runP3 } from './p3-throughput.js';
import { runP4 } from './p4-orchestration.js';
import { runP5 } from './p5-incremental.js';
import { runP6 } from './p6-scale.js';
import { runP7 } from './p7-concurrency.js';
import { renderMarkdown, type BenchReport } from './report.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const ADMIN_KEY = 'bench-admin-key';

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    only: { type: 'string' },
    out: { type: 'string' },
    note: { type: 'string' },
    profile: { type: 'boolean', default: false },
    // Against a running cluster (`npm run cluster`) instead of the embedded stack: its frontend and database.
    'temporal-address': { type: 'string' },
    'database-url': { type: 'string' },
  },
});
const quick = args.quick!;
const phases = (args.only ?? 'p1,p2,p3,p4,p5,p7,p6').split(',').map((s) => s.trim().toLowerCase());
const outName = args.out ?? (quick ? 'latest-quick' : 'latest');
const resultsDir = join(HERE, 'results');

const started = Date.now();
const log = (msg: string) => process.stderr.write(`[bench +${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}\n`);

/** Disk the run needs at its peak (images stay until the stack stops), with a margin. */
function diskNeeded(): number {
  const p1 = quick ? (64 / 1024 + 0.25 + 1) * 2 : (0.25 + 1 + 4) + 4;
  const p2 = quick ? 10 * 0.125 : 10 * 0.36;
  const p3 = quick ? 1.5 : 8.5;
  // P5: the volume, its full backup, a scratch full, one restored volume, deltas, the 1 GiB acceptance case.
  const p5 = quick ? 1.5 : 4 * 4 + 4;
  // P7: 32 volumes with 8 MiB written each, plus their internal snapshots' metadata.
  const p7 = 0.5;
  return (p1 * +phases.includes('p1') + p2 * +phases.includes('p2') + p3 * +phases.includes('p3') + p5 * +phases.includes('p5') + p7 * +phases.includes('p7') + 2) * GiB;
}

async function main(): Promise<void> {
  const root = tmpdir();
  const need = diskNeeded();
  const free = freeBytes(root);
  if (free < need) {
    throw new Error(`${round(free / GiB, 1)} GiB free under ${root}, the ${quick ? 'quick' : 'full'} run needs about ${round(need / GiB, 1)} GiB${quick ? '' : ' (try --quick)'}`);
  }
  const machine = await machineInfo(root);
  log(`${machine.cpuCount} × ${machine.cpuModel}, ${round(machine.memoryBytes / GiB, 1)} GiB RAM, ${round(free / GiB, 1)} GiB free on ${machine.disk.device}; ${quick ? 'quick' : 'full'} run of ${phases.join(', ')}`);
  const load = loadSampler();
  const loadAtStart = os.loadavg();

  // Bundle the no-op workflow while the stack starts (webpack takes seconds).
  const noopBundle = bundleNoopWorkflow(HERE);
  noopBundle.catch(() => undefined);

  installTemporalRuntime(silentLogger);
  const scratchDir = mkdtempSync(join(root, 'volsnap-bench-'));
  let stack: TestStack | undefined;
  let server: Awaited<ReturnType<typeof listen>> | undefined;
  let noop: NoopWorkers | undefined;
  const results: Record<string, unknown> = {};
  const cpu: Record<string, CpuUsage> = {};
  const profiles: Record<string, ProfileSummary | null> = {};
  const failures: Record<string, string> = {};
  let connections = 0;
  let openConnections = 0;
  let stackStartSeconds = 0;
  try {
    const t0 = performance.now();
    const external: Record<string, string> =
      args['temporal-address'] && args['database-url'] ? { TEMPORAL_ADDRESS: args['temporal-address'], DATABASE_URL: args['database-url'] } : {};
    stack = await startTestStack({ env: { ADMIN_API_KEY: ADMIN_KEY, ...external } });
    // Throughput is measured, not the per-key rate limit (docs/security.md).
    const app = createApp(stack, { limits: { ratePerMinute: 0 } });
    server = await listen(app, '127.0.0.1', 0, silentLogger);
    server.server.on('connection', (socket: Socket) => {
      connections++;
      openConnections++;
      socket.once('close', () => openConnections--);
    });
    stackStartSeconds = round((performance.now() - t0) / 1000, 1);
    log(`stack up in ${stackStartSeconds} s; API on http://127.0.0.1:${server.port}`);

    // The no-op worker pair (the orchestration floor for P1 and P4), with the stack's backup pool size.
    const poolSize = Number((await stack.pool.query(`SELECT value FROM configuration WHERE name = 'backup.pool.size'`)).rows[0]?.value ?? 10);
    noop = await startNoopWorkers(stack, await noopBundle, poolSize);

    const admin = new HttpClient(`http://127.0.0.1:${server.port}`, ADMIN_KEY);
    const account = await admin.expect([201], 'POST', '/api/v1/accounts', { name: 'bench-user', role: 'user' });
    const volumePath = async (id: string) => (await admin.expect([200], 'GET', `/api/v1/volumes/${id}`)).body.path as string;
    const ctx: BenchContext = {
      quick,
      stack,
      admin,
      user: admin.as(account.body.apiKey),
      scratchDir,
      volumePath,
      log,
      httpConnections: () => ({ accepted: connections, open: openConnections }),
    };

    const profiler = args.profile ? new PhaseProfiler(join(resultsDir, 'profiles')) : null;
    const runners: Record<string, () => Promise<unknown>> = {
      p1: () => runP1(ctx, noop!),
      p2: () => runP2(ctx),
      p3: () => runP3(ctx),
      p4: () => runP4(ctx, noop!),
      p5: () => runP5(ctx),
      p7: () => runP7(ctx),
      // Last: it grows the tables to 100k snapshots (on accounts of its own, removed at its end).
      p6: () => runP6(ctx),
    };
    for (const p of ['p1', 'p2', 'p3', 'p4', 'p5', 'p7', 'p6']) {
      if (!phases.includes(p)) continue;
      log(`${p.toUpperCase()} started`);
      await profiler?.start();
      const c0 = cpuSnapshot();
      try {
        results[p] = await runners[p]!();
      } catch (err) {
        failures[p] = err instanceof Error ? (err.stack ?? err.message) : String(err);
        log(`${p.toUpperCase()} FAILED: ${failures[p]}`);
      }
      cpu[p] = cpuDiff(c0, cpuSnapshot());
      if (profiler) profiles[p] = await profiler.stop(`${outName}-${p}`);
      log(`${p.toUpperCase()} done in ${cpu[p]!.wallSeconds} s`);
    }
  } finally {
    await noop?.stop().catch(() => undefined);
    await server?.close().catch(() => undefined);
    await stack?.stop().catch((err) => log(`stopping the stack: ${String(err)}`));
    rmSync(scratchDir, { recursive: true, force: true });
  }

  const targets = Object.values(results).flatMap((r) => ((r as { targets?: TargetCheck[] }).targets ?? []));
  const report: BenchReport = {
    generatedAt: new Date().toISOString(),
    mode: quick ? 'quick' : 'full',
    phases,
    durationSeconds: round((Date.now() - started) / 1000, 1),
    stackStartSeconds,
    machine,
    conditions: {
      loadAverageAtStart: loadAtStart.map((x) => round(x)),
      loadAverage1mDuringRun: load.stop(),
      note: args.note ?? null,
      server: args['temporal-address'] ? `cluster: Temporal frontend ${args['temporal-address']}, its PostgreSQL` : 'embedded: Temporal dev server, embedded PostgreSQL',
      httpConnectionsAccepted: connections,
      logging: 'LOG_LEVEL=silent (as in the tests)',
    },
    targets,
    results,
    cpuByPhase: cpu,
    ...(args.profile ? { profiles } : {}),
    ...(Object.keys(failures).length ? { failures } : {}),
  };
  mkdirSync(resultsDir, { recursive: true });
  const jsonPath = join(resultsDir, `${outName}.json`);
  const mdPath = join(resultsDir, `${outName}.md`);
  writeFileSync(jsonPath, `${JSON.stringify(report, null, 2)}\n`);
  writeFileSync(mdPath, renderMarkdown(report));
  log(`wrote ${resolve(jsonPath)} and ${resolve(mdPath)} in ${report.durationSeconds} s`);
  process.stdout.write(renderMarkdown(report));
  if (Object.keys(failures).length) process.exitCode = 1;
}

main().then(
  () => process.exit(process.exitCode ?? 0),
  (err) => {
    log(`failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(1);
  },
);
