/** The machine a run measured, free disk, and CPU accounting per component (our stack vs everything else). */
import { execFile, spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, statfsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { round } from './stats.js';

const execFileP = promisify(execFile);

export interface MachineInfo {
  cpuCount: number;
  cpuModel: string;
  memoryBytes: number;
  kernel: string;
  node: string;
  qemuImg: string;
  disk: { mount: string; device: string; fsType: string; rotational: boolean | null; model: string | null; sizeBytes: number; freeBytesAtStart: number };
  hypervisor: string | null;
}

/** Runs a command to completion; rejects with stderr on a non-zero exit. */
export async function run(cmd: string, args: string[], opts: { cwd?: string } = {}): Promise<{ stdout: string; stderr: string }> {
  return execFileP(cmd, args, { maxBuffer: 64 * 1024 * 1024, ...opts });
}

/** Spawns a command and resolves with its wall time in ms; stdio ignored (the overhead of the spawn is included). */
export function spawnTimed(cmd: string, args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const t = performance.now();
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('error', reject);
    child.once('close', (code) => {
      const ms = performance.now() - t;
      if (code === 0) resolve(ms);
      else reject(new Error(`${cmd} ${args.join(' ')} exited with ${code}: ${stderr.trim()}`));
    });
  });
}

export function freeBytes(dir: string): number {
  const s = statfsSync(dir);
  return Number(s.bavail) * Number(s.bsize);
}

/** The mount holding `dir`: the longest mount point that prefixes it. */
function mountOf(dir: string): { mount: string; device: string; fsType: string } {
  const real = path.resolve(dir);
  let best = { mount: '/', device: 'unknown', fsType: 'unknown' };
  for (const line of readFileSync('/proc/mounts', 'utf8').split('\n')) {
    const [device, mount, fsType] = line.split(' ');
    if (!device || !mount || !fsType) continue;
    if ((real === mount || real.startsWith(mount.endsWith('/') ? mount : `${mount}/`)) && mount.length >= best.mount.length) {
      best = { mount, device, fsType };
    }
  }
  return best;
}

function readTrim(p: string): string | null {
  try {
    return readFileSync(p, 'utf8').trim();
  } catch {
    return null;
  }
}

export async function machineInfo(dataRoot: string): Promise<MachineInfo> {
  const cpus = os.cpus();
  const m = mountOf(dataRoot);
  const base = path.basename(m.device);
  // A partition (vda1, nvme0n1p1) has its queue settings on the whole disk.
  const blk = existsSync(`/sys/block/${base}`) ? base : base.replace(/p?\d+$/, '');
  const rot = readTrim(`/sys/block/${blk}/queue/rotational`);
  const qemu = await run('qemu-img', ['--version']).then((r) => r.stdout.split('\n')[0] ?? '', () => 'not found');
  const lscpu = await run('lscpu', []).then((r) => r.stdout, () => '');
  const s = statfsSync(dataRoot);
  return {
    cpuCount: cpus.length,
    cpuModel: cpus[0]?.model ?? 'unknown',
    memoryBytes: os.totalmem(),
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    qemuImg: qemu,
    disk: {
      mount: m.mount,
      device: m.device,
      fsType: m.fsType,
      rotational: rot === null ? null : rot === '1',
      model: readTrim(`/sys/block/${blk}/device/model`) ?? (blk.startsWith('vd') ? 'virtio-blk (virtual disk)' : null),
      sizeBytes: Number(s.blocks) * Number(s.bsize),
      freeBytesAtStart: freeBytes(dataRoot),
    },
    hypervisor: /Hypervisor vendor:\s*(.+)/.exec(lscpu)?.[1]?.trim() ?? null,
  };
}

const CLK_TCK = 100;

interface ProcStat {
  pid: number;
  ppid: number;
  comm: string;
  /** utime + stime + cutime + cstime, seconds (children counted once reaped). */
  cpuSeconds: number;
}

function readProcStat(pid: number | 'self'): ProcStat | null {
  const raw = readTrim(`/proc/${pid}/stat`);
  if (!raw) return null;
  const close = raw.lastIndexOf(')');
  const comm = raw.slice(raw.indexOf('(') + 1, close);
  const f = raw.slice(close + 2).split(' ');
  // fields after comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
  const num = (i: number) => Number(f[i] ?? 0);
  return { pid: Number(raw.slice(0, raw.indexOf(' '))), ppid: num(1), comm, cpuSeconds: (num(11) + num(12) + num(13) + num(14)) / CLK_TCK };
}

/** CPU seconds by component: this node process, reaped children (qemu-img, qemu-io), and live descendants by name. */
export interface CpuSnapshot {
  at: number;
  machineBusySeconds: number;
  machineTotalSeconds: number;
  components: Record<string, number>;
}

export function cpuSnapshot(): CpuSnapshot {
  const cpuLine = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = cpuLine;
  const busy = user + nice + system + irq + softirq + steal;
  const total = busy + idle + iowait;

  const all = new Map<number, ProcStat>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const st = readProcStat(Number(name));
    if (st) all.set(st.pid, st);
  }
  const self = process.pid;
  const children = new Map<number, number[]>();
  for (const st of all.values()) children.set(st.ppid, [...(children.get(st.ppid) ?? []), st.pid]);
  const components: Record<string, number> = {};
  const raw = readTrim('/proc/self/stat')!;
  const f = raw.slice(raw.lastIndexOf(')') + 2).split(' ');
  components['node (API, workers, bench client)'] = (Number(f[11]) + Number(f[12])) / CLK_TCK;
  components['reaped children of node (qemu-img, qemu-io, cp)'] = (Number(f[13]) + Number(f[14])) / CLK_TCK;
  const stack = [...(children.get(self) ?? [])];
  while (stack.length) {
    const pid = stack.pop()!;
    const st = all.get(pid);
    if (!st) continue;
    const key = /^postgres|^postmaster/.test(st.comm) ? 'postgres' : /^temporal/.test(st.comm) ? 'temporal dev server' : /^qemu/.test(st.comm) ? 'qemu-img (running)' : `other child (${st.comm})`;
    components[key] = (components[key] ?? 0) + st.cpuSeconds;
    // A live child's cutime counts its reaped descendants; its live ones are added on their own.
    stack.push(...(children.get(pid) ?? []));
  }
  return { at: performance.now(), machineBusySeconds: busy / CLK_TCK, machineTotalSeconds: total / CLK_TCK, components };
}

export interface CpuUsage {
  wallSeconds: number;
  /** CPU-seconds the whole machine was busy (all cores) during the interval. */
  machineBusySeconds: number;
  /** Capacity: wall × cores. */
  machineCapacitySeconds: number;
  byComponent: Record<string, number>;
  /** Busy CPU-seconds not accounted to this bench's processes: other users of the machine. */
  otherProcesses: number;
}

export function cpuDiff(a: CpuSnapshot, b: CpuSnapshot): CpuUsage {
  const byComponent: Record<string, number> = {};
  let ours = 0;
  for (const k of new Set([...Object.keys(a.components), ...Object.keys(b.components)])) {
    const d = (b.components[k] ?? 0) - (a.components[k] ?? 0);
    // A process that exited between snapshots shows a negative delta; its time reappears in its parent's cutime.
    if (d > 0.005) {
      byComponent[k] = Math.round(d * 100) / 100;
      ours += d;
    }
  }
  const busy = b.machineBusySeconds - a.machineBusySeconds;
  const wall = (b.at - a.at) / 1000;
  return {
    wallSeconds: Math.round(wall * 100) / 100,
    machineBusySeconds: Math.round(busy * 100) / 100,
    machineCapacitySeconds: Math.round(wall * os.cpus().length * 100) / 100,
    byComponent,
    otherProcesses: Math.round(Math.max(0, busy - ours) * 100) / 100,
  };
}

/** Samples the 1-minute load average every second while a run lasts. */
export function loadSampler() {
  const samples: number[] = [];
  const timer = setInterval(() => samples.push(os.loadavg()[0]!), 1000);
  timer.unref();
  return {
    stop() {
      clearInterval(timer);
      const s = samples.length ? samples : [os.loadavg()[0]!];
      return { mean1m: Math.round((s.reduce((a, b) => a + b, 0) / s.length) * 100) / 100, max1m: Math.round(Math.max(...s) * 100) / 100 };
    },
  };
}

/**
 * How long `spawn()` itself blocks this process's event loop (libuv forks the whole process, so the cost grows
 * with its mapped memory), measured on `true`; with this process's RSS at the time.
 */
export async function spawnBlocking(n: number): Promise<{ rssMiB: number; blockedMs: number[] }> {
  const blockedMs: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    const child = spawn('true', [], { stdio: 'ignore' });
    blockedMs.push(performance.now() - t);
    await new Promise((r) => child.once('close', r));
  }
  return { rssMiB: Math.round(process.memoryUsage().rss / 1048576), blockedMs };
}

/** The CPU usage of several measured spans added up (wall, busy, capacity, per component). */
export function sumCpu(xs: CpuUsage[]): CpuUsage {
  return xs.reduce((x, y) => ({
    wallSeconds: round(x.wallSeconds + y.wallSeconds),
    machineBusySeconds: round(x.machineBusySeconds + y.machineBusySeconds),
    machineCapacitySeconds: round(x.machineCapacitySeconds + y.machineCapacitySeconds),
    byComponent: Object.fromEntries(
      [...new Set([...Object.keys(x.byComponent), ...Object.keys(y.byComponent)])].map((c) => [c, round((x.byComponent[c] ?? 0) + (y.byComponent[c] ?? 0))]),
    ),
    otherProcesses: round(x.otherProcesses + y.otherProcesses),
  }));
}
