/**
 * Which accelerator this host's VMs get (docs/design.md §15): KVM when a guest really runs under it, TCG
 * otherwise; probed, never assumed. On this kind of nested host `/dev/kvm` opens and QEMU starts, yet a guest
 * under KVM hung after its kernel decompressed: only a guest that reaches user space in time proves KVM.
 * The answer is cached in the data dir (one probe per host and QEMU build); VM_ACCELERATOR overrides it.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { run } from '../storage/exec.js';
import type { ComputeDriver } from './driver.js';
import type { GuestBoot } from './test-guest.js';

export type Accelerator = 'kvm' | 'qemu';

export interface AcceleratorChoice {
  accelerator: Accelerator;
  /** Why: what the probe saw, or that it was configured. */
  reason: string;
  probedAt: string | null;
}

/** Until the probe answers (and wherever it cannot run): TCG, which always works. */
export const UNPROBED: AcceleratorChoice = { accelerator: 'qemu', reason: 'not probed yet: TCG until it is', probedAt: null };

const READY = 'volsnap-guest: ready';

export interface ProbeOptions {
  driver: ComputeDriver;
  guest: GuestBoot | undefined;
  /** Where the answer is cached and the probe's console is written. */
  dir: string;
  timeoutMs: number;
  logger: Logger;
  /** Shutdown: the probe stops (its domain destroyed) and nothing is cached. */
  signal?: AbortSignal;
}

/** The cached answer for this QEMU build, else a probe: boot the test guest under KVM with a deadline. */
export async function chooseAccelerator(opts: ProbeOptions): Promise<AcceleratorChoice> {
  const cacheFile = path.join(opts.dir, 'accelerator.json');
  const qemu = await qemuBuild();
  const cached = readCache(cacheFile, qemu);
  if (cached) return cached;
  const choice = await probe(opts);
  await mkdir(opts.dir, { recursive: true });
  await writeFile(cacheFile, `${JSON.stringify({ ...choice, qemu }, null, 2)}\n`);
  opts.logger.info({ accelerator: choice.accelerator, reason: choice.reason }, 'accelerator probed');
  return choice;
}

async function probe(opts: ProbeOptions): Promise<AcceleratorChoice> {
  const at = new Date().toISOString();
  if (!existsSync('/dev/kvm')) return { accelerator: 'qemu', reason: 'no /dev/kvm on this host', probedAt: at };
  if (!opts.guest) return { accelerator: 'qemu', reason: 'the probe guest is not built (npm run setup builds it); TCG', probedAt: at };
  const vmId = randomUUID();
  const consoleLog = path.join(opts.dir, `probe-${vmId}.log`);
  await mkdir(opts.dir, { recursive: true });
  const started = Date.now();
  try {
    await opts.driver.start({
      vmId,
      title: 'volsnap accelerator probe',
      vcpus: 1,
      memoryMb: 128,
      accelerator: 'kvm',
      disks: [],
      isoPath: null,
      consoleLog,
      boot: { ...opts.guest, cmdline: `${opts.guest.cmdline} volsnap.workload=0` },
      user: { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 },
    });
    for (;;) {
      const text = await readFile(consoleLog, 'utf8').catch(() => '');
      if (text.includes(READY)) {
        return { accelerator: 'kvm', reason: `a guest under KVM reached user space in ${Math.round((Date.now() - started) / 100) / 10} s`, probedAt: at };
      }
      if ((await opts.driver.powerState(vmId)) === 'absent') {
        return { accelerator: 'qemu', reason: 'a guest under KVM stopped before reaching user space; TCG', probedAt: at };
      }
      if (opts.signal?.aborted) throw new Error('the accelerator probe was cancelled');
      if (Date.now() - started > opts.timeoutMs) {
        return { accelerator: 'qemu', reason: `a guest under KVM did not reach user space in ${Math.round(opts.timeoutMs / 1000)} s; TCG`, probedAt: at };
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  } catch (err) {
    if (opts.signal?.aborted) throw err;
    return { accelerator: 'qemu', reason: `a guest under KVM did not start (${err instanceof Error ? err.message : String(err)}); TCG`, probedAt: at };
  } finally {
    await opts.driver.stop(vmId, { forced: true }).catch(() => undefined);
    await rm(consoleLog, { force: true });
  }
}

/** QEMU's version line: a new QEMU build (or host) is probed again. */
async function qemuBuild(): Promise<string> {
  return run('qemu-system-x86_64', ['--version']).then(
    (r) => r.stdout.split('\n')[0]!.trim(),
    () => 'unknown',
  );
}

function readCache(file: string, qemu: string): AcceleratorChoice | null {
  try {
    const c = JSON.parse(readFileSync(file, 'utf8')) as AcceleratorChoice & { qemu?: string };
    if (c.qemu !== qemu || (c.accelerator !== 'kvm' && c.accelerator !== 'qemu')) return null;
    return { accelerator: c.accelerator, reason: c.reason, probedAt: c.probedAt };
  } catch {
    return null;
  }
}
