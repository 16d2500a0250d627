/**
 * libvirt for `npm start`, as db/embedded.ts is PostgreSQL for it (docs/design.md §15): a libvirt that answers
 * at the URI is used as it is (a host's own, or the URI in LIBVIRT_URI); otherwise, for the local system URI,
 * virtlogd and then libvirtd are started under keepers (app/keeper.ts: their own process group, restarted if
 * they die, stopped with the service). Domains outlive libvirtd (QEMU runs on; a new libvirtd takes them over),
 * as on any KVM host. Needs root, as libvirt's system instance does.
 */
import { chmodSync, chownSync, existsSync, readFileSync, statSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { createConnection } from 'node:net';
import path from 'node:path';
import type { Logger } from 'pino';
import { startKept, type KeptProcess } from '../app/keeper.js';
import { run } from '../storage/exec.js';

export const SYSTEM_URI = 'qemu:///system';
const VIRTLOGD_SOCKET = '/run/libvirt/virtlogd-sock';
const STOP: Array<[NodeJS.Signals, number]> = [
  ['SIGTERM', 10_000],
  ['SIGKILL', 2_000],
];

export interface LibvirtDaemon {
  uri: string;
  /** Whether this process started libvirtd (and so stops it on close). */
  started: boolean;
  stop(): Promise<void>;
}

/** Why libvirt cannot run here, in words an operator can act on. */
export class LibvirtUnavailableError extends Error {
  override name = 'LibvirtUnavailableError';
}

/** Whether libvirt answers at `uri`. */
export async function libvirtAnswers(uri: string): Promise<boolean> {
  return run('virsh', ['-q', '-c', uri, 'version']).then(
    () => true,
    () => false,
  );
}

export async function ensureLibvirt(opts: { uri?: string | undefined; logDir: string; logger: Logger }): Promise<LibvirtDaemon> {
  const uri = opts.uri ?? SYSTEM_URI;
  const log = opts.logger.child({ component: 'libvirt', uri });
  const none: LibvirtDaemon = { uri, started: false, stop: async () => undefined };
  if (await libvirtAnswers(uri)) {
    log.info('using the running libvirt');
    return none;
  }
  if (uri !== SYSTEM_URI) throw new LibvirtUnavailableError(`libvirt does not answer at ${uri} (LIBVIRT_URI)`);
  const missing = ['virsh', 'virtlogd', 'libvirtd', 'qemu-system-x86_64'].filter((b) => !onPath(b));
  if (missing.length) {
    throw new LibvirtUnavailableError(
      `libvirt is not installed here (missing: ${missing.join(', ')}); \`npm run setup\` installs libvirt-daemon-system and qemu-system-x86`,
    );
  }
  if (process.getuid?.() !== 0) {
    throw new LibvirtUnavailableError(`libvirtd is not running and starting it needs root; start it (libvirtd) or set LIBVIRT_URI`);
  }
  allowKvmGroup(log);
  await mkdir(opts.logDir, { recursive: true });
  const kept: KeptProcess[] = [];
  const stop = async () => {
    for (const p of kept.reverse()) await p.stop();
  };
  try {
    if (!(await socketAnswers(VIRTLOGD_SOCKET))) {
      kept.push(await keep('virtlogd', opts.logDir, log));
      if (!(await waitFor(() => socketAnswers(VIRTLOGD_SOCKET), 15_000))) {
        throw new LibvirtUnavailableError(`virtlogd did not open ${VIRTLOGD_SOCKET}; ${tail(path.join(opts.logDir, 'virtlogd.log'))}`);
      }
    }
    kept.push(await keep('libvirtd', opts.logDir, log));
    if (!(await waitFor(() => libvirtAnswers(uri), 30_000))) {
      throw new LibvirtUnavailableError(`libvirtd did not answer at ${uri}; ${tail(path.join(opts.logDir, 'libvirtd.log'))}`);
    }
  } catch (err) {
    await stop();
    // Another process on this machine (a second service, a cluster's other worker) started it meanwhile.
    if (await libvirtAnswers(uri)) {
      log.info('using the libvirt another process started meanwhile');
      return none;
    }
    throw err;
  }
  for (const p of kept) {
    p.supervise({
      died: ({ code, signal, restartInMs }) => log.warn({ code, signal, restartInMs }, 'a libvirt daemon exited unexpectedly; restarting it'),
      restarted: ({ pid, restarts }) => log.warn({ pid, restarts }, 'libvirt daemon restarted'),
    });
  }
  log.info({ pids: kept.map((p) => p.pid) }, 'libvirt started (virtlogd, libvirtd)');
  return { uri, started: true, stop };
}

async function keep(command: 'virtlogd' | 'libvirtd', logDir: string, log: Logger): Promise<KeptProcess> {
  const p = await startKept({ command, args: [], logFile: path.join(logDir, `${command}.log`), stopSignals: STOP });
  void p.exited.then(({ code, signal, gaveUp }) => {
    if (gaveUp) log.error({ command, code, signal }, `${command} keeps exiting; its keeper gave up restarting it`);
  });
  return p;
}

/**
 * What udev does on a Debian host (no udev here): /dev/kvm for group kvm. Without it libvirt (which checks it
 * as its QEMU user) thinks KVM vanished since it probed QEMU, and probes QEMU again at every call: a minute
 * for each domain start.
 */
function allowKvmGroup(log: Logger): void {
  if (!existsSync('/dev/kvm')) return;
  const gid = kvmGroupId();
  const st = statSync('/dev/kvm');
  if (gid === null || (st.gid === gid && (st.mode & 0o060) === 0o060)) return;
  try {
    chownSync('/dev/kvm', st.uid, gid);
    chmodSync('/dev/kvm', (st.mode & 0o7777) | 0o060);
    log.info('gave group kvm access to /dev/kvm, as udev would');
  } catch (err) {
    log.warn({ err }, 'could not give group kvm access to /dev/kvm; domain starts will be slow');
  }
}

function kvmGroupId(): number | null {
  const line = readFileSync('/etc/group', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('kvm:'));
  return line ? Number(line.split(':')[2]) : null;
}

function onPath(bin: string): boolean {
  return (process.env.PATH ?? '').split(':').some((dir) => dir && existsSync(path.join(dir, bin)));
}

function socketAnswers(file: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection(file);
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

async function waitFor(check: () => Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

function tail(file: string): string {
  try {
    const lines = readFileSync(file, 'utf8').trim().split('\n');
    return `its log ends: ${lines.slice(-3).join(' | ')}`;
  } catch {
    return 'it left no log';
  }
}
