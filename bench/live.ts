/**
 * P1r, time-to-created of a running VM's disk (issue 24): `npm run bench:live [-- --samples N]`. Starts the
 * embedded stack with KVM VMs as libvirt domains (this machine's libvirt, started if needed), boots two test-guest
 * VMs whose data disks are 1 GiB and 16 GiB (256 MiB written in each before boot, the guest writing on), and
 * times `POST /api/v1/volumes/{id}/snapshots` (asyncBackup, an ordinary user, backups parked as in P1) over HTTP,
 * sizes interleaved. Against, in the same run: the floor, a no-op Update-with-Start (bench/noop-workflow.ts,
 * primary as a regular activity, as the host queue runs it) plus the bare snapshot command on the same running
 * QEMU (`virsh qemu-monitor-command … blockdev-snapshot-internal-sync`, one process, as volsnap sends it).
 * Writes bench/results/live.json and live.md.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { createApp } from '../api/app.js';
import { listen } from '../api/server.js';
import { installTemporalRuntime } from '../app/runtime.js';
import { domainName } from '../compute/domain-xml.js';
import { startTestStack, type TestStack } from '../harness/stack.js';
import { silentLogger } from '../observability/logger.js';
import { check, waitUntil, type BenchContext, type TargetCheck } from './context.js';
import { HttpClient } from './lib/http.js';
import { bundleNoopWorkflow, startNoopWorkers } from './lib/noop.js';
import { parkBackups, ParkWatcher } from './lib/park.js';
import { GiB, MiB, ratio, round, summarize, type Summary } from './lib/stats.js';
import { machineInfo } from './lib/system.js';

const exec = promisify(execFile);
const HERE = dirname(fileURLToPath(import.meta.url));
const ADMIN_KEY = 'bench-admin-key';
const { values: args } = parseArgs({ options: { samples: { type: 'string', default: '40' }, note: { type: 'string' } } });
const samples = Number(args.samples);
const started = Date.now();
const log = (msg: string) => process.stderr.write(`[bench:live +${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}\n`);
const virsh = async (...a: string[]) => (await exec('virsh', ['-c', 'qemu:///system', ...a])).stdout;

async function main(): Promise<void> {
  const machine = await machineInfo(tmpdir());
  const noopBundle = bundleNoopWorkflow(HERE);
  installTemporalRuntime(silentLogger);
  const scratchDir = mkdtempSync(join(tmpdir(), 'volsnap-bench-live-'));
  const accelerator = process.env.VM_ACCELERATOR ?? 'qemu';
  let stack: TestStack | undefined;
  let server: Awaited<ReturnType<typeof listen>> | undefined;
  try {
    stack = await startTestStack({
      env: { ADMIN_API_KEY: ADMIN_KEY, KVM_COMPUTE: 'libvirt', VM_ACCELERATOR: accelerator, VM_GUEST_WORKLOAD: 'on', VM_POWER_SYNC_SECONDS: '0' },
    });
    server = await listen(createApp(stack, { limits: { ratePerMinute: 0 } }), '127.0.0.1', 0, silentLogger);
    const admin = new HttpClient(`http://127.0.0.1:${server.port}`, ADMIN_KEY);
    const account = await admin.expect([201], 'POST', '/api/v1/accounts', { name: 'bench-user', role: 'user' });
    const user = admin.as(account.body.apiKey);
    const ctx: BenchContext = { quick: false, stack, admin, user, scratchDir, log, volumePath: async () => '' };
    const noop = await startNoopWorkers(stack, await noopBundle, 10);
    noop.mirror({ primaryAsLocalActivity: false });

    // Two running guests, data disks of 1 and 16 GiB with 256 MiB written before boot (the workload writes on).
    const vms: Array<{ label: string; vmId: string; volumeId: string; path: string }> = [];
    for (const size of [1, 16]) {
      const vm = (await user.expect([201], 'POST', '/api/v1/vms', { name: `live-${size}g`, hypervisor: 'KVM', rootDiskSizeBytes: 64 * MiB, dataDisks: [{ sizeBytes: size * GiB }], start: false })).body;
      const data = vm.volumes.find((v: { type: string }) => v.type === 'DATADISK');
      const path = (await admin.expect([200], 'GET', `/api/v1/volumes/${data.id}`)).body.path as string;
      await exec('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xab 2M 256M', path]);
      await user.expect([200], 'POST', `/api/v1/vms/${vm.id}/actions`, { action: 'start' });
      vms.push({ label: `${size} GiB`, vmId: vm.id, volumeId: data.id, path });
    }
    await waitUntil(async () => {
      for (const v of vms) {
        const tail = (await admin.expect([200], 'GET', `/api/v1/vms/${v.vmId}/console?lines=200`)).body as { lines: string[] };
        if (!tail.lines.some((l) => l.includes('volsnap-guest: wrote seq='))) return false;
      }
      return true;
    }, 120_000, 'both guests writing', 500);
    log(`two guests running (${accelerator === 'kvm' ? 'KVM' : 'TCG'}), writing to their data disks`);

    const unpark = await parkBackups(ctx, 'live-store-blocker');
    const parks = new ParkWatcher(stack.pool);
    const http: Record<string, number[]> = Object.fromEntries(vms.map((v) => [v.label, []]));
    const bare: Record<string, number[]> = Object.fromEntries(vms.map((v) => [v.label, []]));
    const noopMs: number[] = [];
    // The disk's qcow2 node, as volsnap's driver finds it (query-block), for the bare command.
    const nodes = new Map<string, string>();
    for (const v of vms) {
      const blocks = JSON.parse(await virsh('qemu-monitor-command', domainName(v.vmId), '{"execute":"query-block"}')).return as Array<{ inserted?: { file?: string; 'node-name'?: string } }>;
      nodes.set(v.label, blocks.find((b) => b.inserted?.file === v.path)!.inserted!['node-name']!);
    }
    for (let i = 0; i < samples; i++) {
      for (const v of i % 2 ? [...vms].reverse() : vms) {
        const t = performance.now();
        const res = await user.expect([201], 'POST', `/api/v1/volumes/${v.volumeId}/snapshots`, { asyncBackup: true });
        http[v.label]!.push(performance.now() - t);
        await parks.parked(res.body.id);
        const tag = `bench-bare-${i}`;
        const cmd = (execute: string) => JSON.stringify({ execute, arguments: { device: nodes.get(v.label), name: tag } });
        const b = performance.now();
        await virsh('qemu-monitor-command', domainName(v.vmId), cmd('blockdev-snapshot-internal-sync'));
        bare[v.label]!.push(performance.now() - b);
        await virsh('qemu-monitor-command', domainName(v.vmId), cmd('blockdev-snapshot-delete-internal-sync'));
      }
      noopMs.push((await noop.startOne()).ms);
      if ((i + 1) % 10 === 0) log(`${i + 1}/${samples} rounds`);
    }
    await unpark();
    await noop.stop();

    const s = (xs: number[]): Summary => summarize(xs);
    const noopS = s(noopMs);
    const rows = vms.map((v) => {
      const got = s(http[v.label]!);
      const cmd = s(bare[v.label]!);
      return { disk: v.label, http: got, bareCommand: cmd, floorP50: round(noopS.p50 + cmd.p50), floorP99: round(noopS.p99 + cmd.p99) };
    });
    const [small, large] = rows as [(typeof rows)[0], (typeof rows)[0]];
    const targets: TargetCheck[] = [
      ...rows.map((r) => check(`p1r-${r.disk.replace(' ', '')}-p50`, `time-to-created p50 / floor p50, ${r.disk} disk`, ratio(r.http.p50, r.floorP50), '<=', 1.3)),
      check('p1r-size-independence', 'time-to-created p50, 16 GiB disk / 1 GiB disk', ratio(large.http.p50, small.http.p50), '<=', 1.2),
    ];
    const report = {
      phase: 'P1r',
      generatedAt: new Date().toISOString(),
      note: args.note ?? null,
      machine: { cpuCount: machine.cpuCount, cpuModel: machine.cpuModel, memoryGiB: round(machine.memoryBytes / GiB, 1) },
      accelerator: accelerator === 'kvm' ? 'KVM' : 'TCG (VM_ACCELERATOR=qemu: on this machine the probe answers TCG, KVM hangs after the kernel decompresses)',
      samples,
      noopUpdateWithStart: noopS,
      rows,
      targets,
    };
    const out = join(HERE, 'results', 'live');
    writeFileSync(`${out}.json`, JSON.stringify(report, null, 2) + '\n');
    writeFileSync(`${out}.md`, markdown(report));
    log(`wrote ${out}.json and .md`);
    for (const t of targets) log(`${t.met ? 'met' : 'MISSED'}: ${t.description} = ${t.value} (${t.comparison} ${t.limit})`);
  } finally {
    await server?.close();
    await stack?.stop();
    rmSync(scratchDir, { recursive: true, force: true });
  }
}

function markdown(r: { generatedAt: string; accelerator: string; samples: number; noopUpdateWithStart: Summary; rows: Array<{ disk: string; http: Summary; bareCommand: Summary; floorP50: number; floorP99: number }>; targets: TargetCheck[]; note: string | null }): string {
  const ms = (x: number) => `${round(x, 1)} ms`;
  return [
    '# P1r: time-to-created of a running VM\'s disk',
    '',
    `${r.generatedAt}; ${r.samples} requests per disk, sizes interleaved; guests under ${r.accelerator}.${r.note ? ` ${r.note}` : ''}`,
    'Floor: a no-op Update-with-Start (primary as a regular activity) + the bare `blockdev-snapshot-internal-sync` through `virsh qemu-monitor-command` on the same running QEMU.',
    '',
    '| disk | HTTP p50 | HTTP p99 | bare command p50 | floor p50 | floor p99 |',
    '|---|---|---|---|---|---|',
    ...r.rows.map((x) => `| ${x.disk} | ${ms(x.http.p50)} | ${ms(x.http.p99)} | ${ms(x.bareCommand.p50)} | ${ms(x.floorP50)} | ${ms(x.floorP99)} |`),
    '',
    `No-op Update-with-Start: p50 ${ms(r.noopUpdateWithStart.p50)}, p99 ${ms(r.noopUpdateWithStart.p99)}.`,
    '',
    '| target | value | limit | met |',
    '|---|---|---|---|',
    ...r.targets.map((t) => `| ${t.description} | ${t.value} | ${t.comparison} ${t.limit} | ${t.met ? 'yes' : '**no**'} |`),
    '',
  ].join('\n');
}

main().catch((err) => {
  process.stderr.write(`bench:live failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
