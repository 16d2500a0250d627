/** Starts the XenAPI simulator (test/support/xenapi-simulator.ts) as a separate process on loopback, for tests. */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const SIMULATOR = path.join(path.dirname(fileURLToPath(import.meta.url)), 'xenapi-simulator.ts');

/** Simulator-only fault knobs; see `Faults` in xenapi-simulator.ts. */
export interface XenSimFaults {
  expireSessionsAfterBytes?: number | null;
  dropConnectionOnExpiry?: boolean;
  failNextExports?: number;
  failExportAfterBytes?: number;
  failNextImports?: number;
  exportContentLength?: boolean;
  exportBytesPerSec?: number | null;
  attachedVdis?: string[];
}

/** Counters the simulator keeps. */
export interface XenSimStats {
  logins: number;
  logouts: number;
  exports: number;
  imports: number;
  activeSessions: number;
  pendingTasks: number;
  tasks: number;
  calls: Record<string, number>;
}

/** A VDI as the simulator's admin API lists it, with the raw file that holds its bytes. */
export interface XenSimVdi {
  ref: string;
  uuid: string;
  name_label: string;
  virtual_size: number;
  is_a_snapshot: boolean;
  other_config: Record<string, string>;
  file: string;
}

/** A running simulator. */
export interface XenSim {
  url: string;
  /** Uuids of the simulated SRs (what a storage_pools row's path holds). */
  srs: string[];
  username: string;
  password: string;
  dir: string;
  /** Raw file holding a VDI's bytes (`<dir>/<sr-uuid>/<vdi-uuid>.raw`). */
  vdiFile(srUuid: string, vdiUuid: string): string;
  setFaults(faults: XenSimFaults): Promise<void>;
  expireSessions(): Promise<void>;
  stats(): Promise<XenSimStats>;
  /** Every session ref the simulator ever issued (to check none leaks into errors or logs). */
  sessionRefs(): Promise<string[]>;
  vdis(): Promise<XenSimVdi[]>;
  stop(): Promise<void>;
}

/** Spawns the simulator with `node --import tsx`, waits for its `{"url": ...}` line, and returns a handle. */
export async function startXenSim(opts: { dir: string; srCount?: number; username?: string; password?: string }): Promise<XenSim> {
  const username = opts.username ?? 'root';
  const password = opts.password ?? `sim-${randomUUID()}`;
  const srArgs = Array.from({ length: opts.srCount ?? 2 }, () => ['--sr', randomUUID()]).flat();
  const child = spawn(process.execPath, ['--import', 'tsx', SIMULATOR, '--port', '0', '--dir', opts.dir, '--username', username, ...srArgs], {
    // The password goes through the environment, never argv (visible to every user in `ps`).
    env: { ...process.env, XENAPI_SIM_PASSWORD: password },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  const ready = await readyLine(child, () => stderr);
  const url = ready.url;

  const admin = async <T>(method: string, p: string, body?: unknown): Promise<T> => {
    const res = await fetch(`${url}${p}`, { method, body: body === undefined ? undefined : JSON.stringify(body) });
    if (!res.ok) throw new Error(`simulator ${method} ${p} answered ${res.status}`);
    return (await res.json()) as T;
  };

  return {
    url,
    srs: ready.srs,
    username,
    password,
    dir: opts.dir,
    vdiFile: (srUuid, vdiUuid) => path.join(opts.dir, srUuid, `${vdiUuid}.raw`),
    setFaults: async (f) => void (await admin('POST', '/_sim/faults', f)),
    expireSessions: async () => void (await admin('POST', '/_sim/sessions/expire')),
    stats: () => admin<XenSimStats>('GET', '/_sim/stats'),
    sessionRefs: async () => (await admin<{ refs: string[] }>('GET', '/_sim/sessions')).refs,
    vdis: () => admin<XenSimVdi[]>('GET', '/_sim/vdis'),
    stop: () => stopChild(child),
  };
}

function readyLine(child: ChildProcess, stderr: () => string): Promise<{ url: string; srs: string[] }> {
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    const timer = setTimeout(() => fail(new Error('XenAPI simulator did not start within 30 s')), 30_000);
    const fail = (err: Error) => {
      clearTimeout(timer);
      lines.close();
      child.kill('SIGKILL');
      reject(new Error(`${err.message}\n${stderr()}`));
    };
    child.once('exit', (code) => fail(new Error(`XenAPI simulator exited with code ${code}`)));
    lines.once('line', (line) => {
      clearTimeout(timer);
      child.removeAllListeners('exit');
      try {
        resolve(JSON.parse(line) as { url: string; srs: string[] });
      } catch {
        fail(new Error(`unexpected simulator output: ${line}`));
      }
    });
  });
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(timer);
}
