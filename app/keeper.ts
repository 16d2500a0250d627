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

export interface KeptProcess {
  /** The server's pid (not the keeper's). */
  pid: number;
  keeperPid: number;
  /** Settles when the server has exited. */
  exited: Promise<{ code: number | null; signal: string | null }>;
  /** Stops the server with its stop signals and waits for it and its keeper to exit. */
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
  let exitInfo: { code: number | null; signal: string | null } | null = null;
  const exited = new Promise<{ code: number | null; signal: string | null }>((res) => {
    createInterface({ input: keeper.stdout! }).on('line', (line) => {
      let msg: { event?: string; pid?: number; code?: number | null; signal?: string | null; error?: string };
      try {
        msg = JSON.parse(line);
      } catch {
        return;
      }
      if (msg.event === 'started') started(msg.pid!);
      if (msg.event === 'exit') {
        exitInfo = { code: msg.code ?? null, signal: msg.signal ?? null };
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
  return {
    pid: await pid,
    keeperPid: keeper.pid!,
    exited,
    async stop() {
      // Hold this process open until the server is down (the pipes were unref'd above).
      keeper.ref();
      (keeper.stdout as unknown as { ref(): void }).ref();
      keeper.stdin!.end();
      await Promise.all([exited, keeperExited]);
    },
  };
}
