import { execFile, fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** Options for {@link run}. */
export interface RunOptions {
  /** Kills the child (SIGTERM) and rejects with an AbortError once it has exited. */
  signal?: AbortSignal;
  /** Receives stdout as it arrives (e.g. qemu-img -p progress); stdout is still collected. */
  onStdout?: (chunk: string) => void;
}

/** Output of a command that exited 0. */
export interface RunResult {
  stdout: string;
  stderr: string;
}

/** A command that failed to start, exited non-zero or was killed; `stderr` holds its trimmed stderr. */
export class CommandError extends Error {
  override name = 'CommandError';
  constructor(
    message: string,
    readonly command: string,
    readonly exitCode: number | null,
    readonly stderr: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * Runs `file args` without a shell; resolves with its output when it exits 0, otherwise rejects with CommandError.
 * The command is started by the spawn helper (see spawn-helper.mjs), or directly when the helper is unavailable.
 */
export function run(file: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const command = [file, ...args].join(' ');
  if (opts.signal?.aborted) return Promise.reject(abortError(command, opts.signal));
  const helper = spawnHelper();
  return helper ? helper.run(command, file, args, opts) : runDirect(command, file, args, opts);
}

/** Outcome of a command, as the helper reports it or execFile's callback gives it. */
interface Exit {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  /** The command could not be started (ENOENT, EACCES, ...). */
  error: { message: string; code: string | null } | null;
}

function settleExit(command: string, exit: Exit, opts: RunOptions, resolve: (r: RunResult) => void, reject: (e: Error) => void): void {
  if (!exit.error && exit.code === 0) return resolve({ stdout: exit.stdout, stderr: exit.stderr });
  if (opts.signal?.aborted) return reject(abortError(command, opts.signal));
  const how =
    exit.error ? exit.error.message : exit.code !== null ? `exited with code ${exit.code}` : `was killed by ${exit.signal ?? 'a signal'}`;
  const detail = exit.stderr.trim();
  const cause = exit.error ? Object.assign(new Error(exit.error.message), { code: exit.error.code }) : undefined;
  reject(new CommandError(`${command} ${how}${detail ? `: ${detail}` : ''}`, command, exit.code, detail, { cause }));
}

/** execFile from this process (forks it): the fallback when the helper cannot run. */
function runDirect(command: string, file: string, args: readonly string[], opts: RunOptions): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      file,
      args,
      // Progress output of long copies can be large; 64 MiB is far above anything qemu-img prints.
      { signal: opts.signal, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' },
      (err, stdout, stderr) => {
        const code = err && typeof err.code === 'number' ? err.code : err ? null : 0;
        const startFailed = err && child.pid === undefined;
        const exit: Exit = {
          code,
          signal: err?.signal ?? null,
          stdout,
          stderr,
          error: startFailed ? { message: err.message, code: typeof err.code === 'string' ? err.code : null } : null,
        };
        // On abort execFile calls back before the child is gone; wait for it so callers can clean up its files safely.
        const settle = () => settleExit(command, exit, opts, resolve, reject);
        if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) settle();
        else child.once('exit', settle);
      },
    );
    if (opts.onStdout) child.stdout?.on('data', (chunk: string) => opts.onStdout?.(chunk));
  });
}

type HelperMessage = ({ type: 'stdout'; id: number; chunk: string }) | ({ type: 'exit'; id: number } & Exit);

/** One long-lived, small child process that spawns commands for this process. */
class SpawnHelper {
  private nextId = 1;
  private readonly pending = new Map<number, { onStdout?: (chunk: string) => void; done: (exit: Exit) => void }>();

  constructor(readonly child: ChildProcess) {
    child.on('message', (msg: HelperMessage) => {
      const p = this.pending.get(msg.id);
      if (!p) return;
      if (msg.type === 'stdout') return p.onStdout?.(msg.chunk);
      this.pending.delete(msg.id);
      this.idleCheck();
      p.done(msg);
    });
    child.once('exit', (code, signal) => {
      if (helper === this) helper = undefined; // the next command starts a new helper
      // Killed outright (SIGKILL, OOM), it could not stop its commands, and they would run on orphaned (a
      // persistent qemu-nbd -t for ever). They are still in its process group (detached: it leads one).
      if (child.pid) {
        try {
          process.kill(-child.pid, 'SIGTERM');
        } catch {
          // none left
        }
      }
      const exit: Exit = { code: null, signal: null, stdout: '', stderr: '', error: { message: `failed: the spawn helper exited (${signal ?? code})`, code: null } };
      for (const p of this.pending.values()) p.done(exit);
      this.pending.clear();
    });
    child.on('error', () => undefined); // reported through 'exit'
    this.idleCheck();
  }

  /** The helper must not keep an otherwise finished process alive, but must while commands run. */
  private idleCheck(): void {
    const channel = this.child.channel as { ref(): void; unref(): void } | undefined;
    if (this.pending.size > 0) channel?.ref();
    else channel?.unref();
  }

  run(command: string, file: string, args: readonly string[], opts: RunOptions): Promise<RunResult> {
    return new Promise((resolve, reject) => {
      const id = this.nextId++;
      const onAbort = () => this.child.send({ type: 'kill', id }, () => undefined);
      this.pending.set(id, {
        onStdout: opts.onStdout,
        done: (exit) => {
          opts.signal?.removeEventListener('abort', onAbort);
          settleExit(command, exit, opts, resolve, reject);
        },
      });
      this.idleCheck();
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      this.child.send({ type: 'run', id, file, args, streamStdout: opts.onStdout !== undefined }, (err) => {
        if (!err) return;
        const p = this.pending.get(id);
        this.pending.delete(id);
        this.idleCheck();
        p?.done({ code: null, signal: null, stdout: '', stderr: '', error: { message: `failed: the spawn helper is unreachable (${err.message})`, code: null } });
      });
    });
  }
}

const HELPER_PATH = fileURLToPath(new URL('./spawn-helper.mjs', import.meta.url));
let helper: SpawnHelper | undefined;
let helperUnavailable = false;

/** The process's spawn helper, started on first use; undefined when it cannot be started here. */
function spawnHelper(): SpawnHelper | undefined {
  if (helperUnavailable) return undefined;
  if (helper) return helper;
  try {
    // Detached: its own process group, so a terminal's Ctrl-C does not kill the copies it runs; they may finish
    // while the workers drain. It stops them itself when this process goes (the IPC channel closes).
    const child = fork(HELPER_PATH, [], { execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'], detached: true });
    child.unref();
    helper = new SpawnHelper(child);
  } catch {
    helperUnavailable = true;
  }
  return helper;
}

/** Turns the helper off (commands are forked from this process) or back on; for tests of both paths. */
export function useSpawnHelper(enabled: boolean): void {
  helperUnavailable = !enabled;
}

/** The helper's pid (tests), starting it if needed. */
export function spawnHelperPid(): number | undefined {
  return spawnHelper()?.child.pid;
}

function abortError(command: string, signal: AbortSignal): Error {
  const err = new Error(`${command} was aborted`, { cause: signal.reason });
  err.name = 'AbortError';
  return err;
}
