import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { resolve } from 'node:path';
import { createInterface } from 'node:readline';

const KEEPER = resolve(import.meta.dirname, 'keeper.mjs');

export interface KeptProcessSpec {
  command: string;
  args: string[];
  env?: Record<string, string>;
  /** Run as this user (root runs PostgreSQL as `postgres`). */
  uid?: number;
  gid?: number;
  /** The server's stdout and stderr (and the keeper's own stderr) are appended here. */
  logFile: string;
  /** How to stop it: each signal in turn, waiting up to its time for the exit before the next. */
  stopSignals: Array<[NodeJS.Signals, number]>;
}

export interface ServerExit {
  code: number | null;
  signal: string | null;
  /** Why it could not be (re)started at all. */
  error?: string;
}

export interface SupervisionHooks {
  /** The server exited without being asked to; the keeper starts it again in `restartInMs`. */
  died?(exit: ServerExit & { restartInMs: number }): void;
  /** The keeper started it again: `pid` is the new server's; `code`/`signal` tell how the previous one ended. */
  restarted?(info: ServerExit & { pid: number; restarts: number }): void;
}

export interface KeptProcess {
  /** The server's current pid (not the keeper's): a restart under supervision changes it. */
  readonly pid: number;
  keeperPid: number;
  /**
   * Settles when the server is gone for good: stopped, exited before supervision began, or exited once too
   * often under supervision (`gaveUp`).
   */
  exited: Promise<ServerExit & { gaveUp?: boolean }>;
  /**
   * From now on the keeper restarts the server when it exits without being asked to (after 1 s, doubling up to
   * 10 s; it gives up after 5 restarts within 60 s). Call once the server is up, so a failed start stays a failure.
   */
  supervise(hooks?: SupervisionHooks): void;
  /** Stops the server (whichever pid it has now) with its stop signals and waits for it and its keeper to exit. */
  stop(): Promise<void>;
}

/**
 * Runs a server through a detached keeper process (app/keeper.mjs): in a process group of its own, so
 * signals meant for the service (Ctrl-C, a SIGKILL of its group) do not reach it, and stopped by the keeper
 * when `stop()` is called or when this process dies.
 */
export async function startKept(spec: KeptProcessSpec): Promise<KeptProcess> {
  const err = openSync(spec.logFile, 'a');
  const keeper = spawn(process.execPath, [KEEPER, JSON.stringify(spec)], { detached: true, stdio: ['pipe', 'pipe', err] });
  closeSync(err);
  // The keeper must never hold this process open: its pipes are only a lifeline.
  keeper.unref();
  (keeper.stdin as unknown as { unref(): void }).unref();
  (keeper.stdout as unknown as { unref(): void }).unref();
  keeper.stdin!.on('error', () => undefined);
  const keeperExited = new Promise<void>((r) => keeper.once('exit', () => r()));

  let started: (pid: number) => void;
  let failed: (e: Error) => void;
  const pid = new Promise<number>((res, rej) => {
    started = res;
    failed = rej;
  });
  let current = 0;
  let hooks: SupervisionHooks = {};
  let exitInfo: (ServerExit & { gaveUp?: boolean }) | null = null;
  const exited = new Promise<ServerExit & { gaveUp?: boolean }>((res) => {
    createInterface({ input: keeper.stdout! }).on('line', (line) => {
      let msg: {
        event?: string;
        pid?: number;
        code?: number | null;
        signal?: string | null;
        error?: string;
        restartInMs?: number;
        restarts?: number;
        gaveUp?: boolean;
      };
      try {
        msg = JSON.parse(line);
      } catch {
        return;
      }
      const how: ServerExit = { code: msg.code ?? null, signal: msg.signal ?? null, ...(msg.error ? { error: msg.error } : {}) };
      if (msg.event === 'started') {
        current = msg.pid!;
        started(msg.pid!);
      }
      if (msg.event === 'died') hooks.died?.({ ...how, restartInMs: msg.restartInMs ?? 0 });
      if (msg.event === 'restarted') {
        current = msg.pid!;
        hooks.restarted?.({ ...how, pid: msg.pid!, restarts: msg.restarts ?? 0 });
      }
      if (msg.event === 'exit') {
        exitInfo = { code: msg.code ?? null, signal: msg.signal ?? null, ...(msg.error ? { error: msg.error } : {}), ...(msg.gaveUp ? { gaveUp: true } : {}) };
        if (msg.error) failed(new Error(`could not run ${spec.command}: ${msg.error}`));
        else failed(new Error(`${spec.command} exited at once (${msg.code ?? msg.signal})`));
        res(exitInfo);
      }
    });
    keeper.once('exit', (code, signal) => {
      failed(new Error(`the keeper of ${spec.command} exited (${code ?? signal})`));
      res(exitInfo ?? { code: null, signal: null });
    });
  });
  // The unref'd keeper cannot hold the loop open while its caller awaits the start: this does, until then.
  const awaitingStart = setInterval(() => undefined, 60_000);
  await pid.finally(() => clearInterval(awaitingStart));
  return {
    get pid() {
      return current;
    },
    keeperPid: keeper.pid!,
    exited,
    supervise(h = {}) {
      hooks = h;
      if (exitInfo) return;
      keeper.stdin!.write('supervise\n');
    },
    async stop() {
      // Hold this process open until the server is down (the pipes were unref'd above).
      keeper.ref();
      (keeper.stdout as unknown as { ref(): void }).ref();
      keeper.stdin!.end();
      await Promise.all([exited, keeperExited]);
    },
  };
}
