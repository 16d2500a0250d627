import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { Connection } from '@temporalio/client';
import type { Logger } from 'pino';
import { temporalCli } from './binaries.js';
import { DEV_SERVER_SEARCH_ATTRIBUTE_ARGS } from './search-attributes.js';

export interface DevServer {
  address: string;
  uiUrl: string | null;
  child: ChildProcess;
  stop(): Promise<void>;
}

export interface DevServerOptions {
  dataDir: string;
  port: number;
  uiPort: number | null;
  namespace: string;
  ip?: string;
  logger?: Logger;
}

/**
 * Starts `temporal server start-dev` with its SQLite file in the data dir, the Web UI, and the search
 * attributes registered; resolves when the frontend answers.
 */
export async function startDevServer(opts: DevServerOptions): Promise<DevServer> {
  const exe = temporalCli();
  if (exe.type !== 'existing-path') {
    throw new Error('Temporal CLI not found: run `npm run setup`, put `temporal` on PATH, or set TEMPORAL_CLI_PATH');
  }
  const ip = opts.ip ?? '127.0.0.1';
  mkdirSync(join(opts.dataDir, 'logs'), { recursive: true });
  const out = openSync(join(opts.dataDir, 'logs', 'temporal-dev-server.log'), 'a');
  const args = [
    'server', 'start-dev',
    '--db-filename', join(opts.dataDir, 'temporal.sqlite'),
    '--ip', ip,
    '--port', String(opts.port),
    '--namespace', opts.namespace,
    ...(opts.uiPort ? ['--ui-port', String(opts.uiPort)] : ['--headless']),
    ...DEV_SERVER_SEARCH_ATTRIBUTE_ARGS,
  ];
  const child = spawn(exe.path, args, { stdio: ['ignore', out, out] });
  const address = `${ip}:${opts.port}`;
  let exited: string | null = null;
  child.once('exit', (code, signal) => {
    exited = `exited with ${code ?? signal}`;
    opts.logger?.warn({ code, signal }, 'Temporal dev server exited');
  });

  const deadline = Date.now() + 60_000;
  for (;;) {
    if (exited) throw new Error(`Temporal dev server ${exited}; see logs/temporal-dev-server.log`);
    try {
      const conn = await Connection.connect({ address, connectTimeout: 1000 });
      await conn.workflowService.getSystemInfo({});
      await conn.close();
      break;
    } catch (err) {
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(`Temporal dev server did not answer on ${address} within 60 s`, { cause: err });
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  const uiUrl = opts.uiPort ? `http://${ip}:${opts.uiPort}` : null;
  opts.logger?.info({ address, uiUrl, cli: exe.path }, 'Temporal dev server started');
  return {
    address,
    uiUrl,
    child,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        child.once('exit', () => {
          clearTimeout(timer);
          resolve();
        });
        child.kill('SIGTERM');
      }),
  };
}
