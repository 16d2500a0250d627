import { spawn, type ChildProcess } from 'node:child_process';
import { openSync } from 'node:fs';
import { join, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '..');

export interface ServiceProcess {
  child: ChildProcess;
  /** SIGKILL the whole process group (the service and every child: PostgreSQL, the Temporal server). */
  killGroup(): Promise<void>;
  /** SIGTERM and wait for a clean exit. */
  stop(): Promise<number | null>;
}

/** Runs one of the service's entry points (as `npm start` / `npm run worker` would) in its own process group. */
export function spawnService(entry: 'worker/main.ts' | 'worker/worker-main.ts' | 'api/main.ts', env: Record<string, string>, logFile: string): ServiceProcess {
  const out = openSync(logFile, 'a');
  const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, entry)], {
    cwd: ROOT,
    env: { ...process.env, LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', out, out],
    detached: true,
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return {
    child,
    async killGroup() {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
      await exited;
    },
    async stop() {
      if (child.exitCode !== null) return child.exitCode;
      process.kill(-child.pid!, 'SIGTERM');
      return exited;
    },
  };
}

/** Polls an HTTP URL until it answers 200. */
export async function waitForHttp200(url: string, timeoutMs = 90_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await fetch(url).then((r) => r.ok, () => false);
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${url} did not answer 200 within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 250));
  }
}
