import { hostname } from 'node:os';
import { linkSync, mkdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';

/** A process as recorded in a pid file: the start time tells a live process from a reused pid. */
export interface ProcessIdentity {
  pid: number;
  /** /proc/<pid>/stat start time (clock ticks since boot); null where /proc is not available. */
  startTime: string | null;
}

function readProc(pid: number, file: string): string | null {
  try {
    return readFileSync(`/proc/${pid}/${file}`, 'utf8');
  } catch {
    return null;
  }
}

/** Field 22 of /proc/<pid>/stat (after the parenthesised command name, which may hold spaces). */
export function processStartTime(pid: number): string | null {
  const stat = readProc(pid, 'stat');
  return stat ? (stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null) : null;
}

/** The process's command line, or null when it is gone or /proc is not available. */
export function processCommandLine(pid: number): string | null {
  return readProc(pid, 'cmdline')?.replace(/\0/g, ' ').trim() ?? null;
}

/** Whether `pid` runs and is not a zombie (a zombie has exited; only its parent has not reaped it yet). */
export function pidRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  const stat = readProc(pid, 'stat');
  return !stat || stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
}

/** Whether the recorded process still runs (the same process, not a later one that got its pid). */
export function isRunning(id: ProcessIdentity): boolean {
  if (!Number.isInteger(id.pid) || id.pid <= 0 || !pidRunning(id.pid)) return false;
  return id.startTime === null || processStartTime(id.pid) === null || processStartTime(id.pid) === id.startTime;
}

export function identityOf(pid: number): ProcessIdentity {
  return { pid, startTime: processStartTime(pid) };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits until `running()` turns false; false if it still runs after `ms`. */
export async function waitUntilGone(running: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (running()) {
    if (Date.now() > deadline) return false;
    await sleep(100);
  }
  return true;
}

/**
 * Stops a process that is not our child (a previous run's server): each signal in turn, waiting up to its time.
 * Throws if it is still there after the last one.
 */
export async function stopProcess(id: ProcessIdentity, signals: Array<[NodeJS.Signals, number]>, what: string): Promise<void> {
  for (const [signal, ms] of signals) {
    if (!isRunning(id)) return;
    try {
      process.kill(id.pid, signal);
    } catch {
      return;
    }
    if (await waitUntilGone(() => isRunning(id), ms)) return;
  }
  throw new Error(`${what} (pid ${id.pid}) did not stop`);
}

/** The owner file of a data dir: which volsnap process runs its embedded servers. */
export const OWNER_FILE = 'volsnap.pid';

interface OwnerRecord extends ProcessIdentity {
  hostname: string;
  startedAt: string;
}

/** Another live volsnap process owns the data dir. */
export class DataDirInUseError extends Error {
  constructor(dataDir: string, readonly owner: OwnerRecord) {
    super(
      `data dir ${dataDir} is in use by volsnap pid ${owner.pid} (started ${owner.startedAt}); ` +
        'stop that process first or set another VOLSNAP_DATA_DIR',
    );
    this.name = 'DataDirInUseError';
  }
}

function readOwner(file: string): OwnerRecord | null {
  try {
    const owner = JSON.parse(readFileSync(file, 'utf8')) as OwnerRecord;
    return Number.isInteger(owner.pid) ? owner : null;
  } catch {
    return null;
  }
}

/**
 * Makes this process the owner of `dataDir` (the embedded PostgreSQL and Temporal dev server under it are
 * ours to start, and to clean up after a dead previous owner). Refuses while another live process owns it.
 * The file is created with link(2), which is atomic and fails if it exists, so a reader never sees half a record.
 */
export function claimDataDir(dataDir: string, logger?: Logger): { release(): void } {
  mkdirSync(dataDir, { recursive: true });
  const file = join(dataDir, OWNER_FILE);
  const me: OwnerRecord = { ...identityOf(process.pid), hostname: hostname(), startedAt: new Date().toISOString() };
  const temp = `${file}.${process.pid}.tmp`;
  writeFileSync(temp, `${JSON.stringify(me)}\n`);
  try {
    for (let attempt = 0; ; attempt++) {
      try {
        linkSync(temp, file);
        break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt >= 5) throw err;
      }
      const owner = readOwner(file);
      // A different host sharing the directory cannot be checked: refuse rather than guess.
      if (owner && owner.pid !== process.pid && (owner.hostname !== me.hostname || isRunning(owner))) throw new DataDirInUseError(dataDir, owner);
      if (owner && owner.pid !== process.pid) logger?.info({ previousOwnerPid: owner.pid }, 'the previous owner of the data dir is gone; taking over');
      rmSync(file, { force: true });
    }
  } finally {
    rmSync(temp, { force: true });
  }
  return {
    release() {
      if (readOwner(file)?.pid === process.pid) {
        try {
          unlinkSync(file);
        } catch {
          // already gone
        }
      }
    },
  };
}
