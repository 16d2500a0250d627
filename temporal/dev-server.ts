import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Connection } from '@temporalio/client';
import type { Logger } from 'pino';
import { portInUse } from '../db/embedded.js';
import { startKept } from '../app/keeper.js';
import { identityOf, isRunning, processCommandLine, stopProcess, type ProcessIdentity } from '../app/pids.js';
import { temporalCli } from './binaries.js';
import { DEV_SERVER_SEARCH_ATTRIBUTE_ARGS } from './search-attributes.js';

export interface DevServer {
  address: string;
  uiUrl: string | null;
  /** The server's current pid (it runs under a detached keeper, not as our child; a restart changes it). */
  readonly pid: number;
  /** Settles when the server is gone for good: stopped, or dead and no longer restarted by its keeper. */
  exited: Promise<unknown>;
  stop(): Promise<void>;
}

/**
 * The dev server's pid file in the data dir, so that the next start can stop one a dead run left. It names the
 * current server: rewritten when the keeper restarts it.
 */
const PID_FILE = 'temporal-dev-server.pid';
const STOP: Array<[NodeJS.Signals, number]> = [
  ['SIGTERM', 10_000],
  ['SIGKILL', 5_000],
];

/** Stops a dev server that a previous run started from this data dir and left running. */
async function clearLeftoverDevServer(dataDir: string, logger?: Logger): Promise<void> {
  const file = join(dataDir, PID_FILE);
  let previous: ProcessIdentity;
  try {
    previous = JSON.parse(readFileSync(file, 'utf8')) as ProcessIdentity;
  } catch {
    return;
  }
  // Same pid, same start time, and started on our SQLite file: only then is it ours to stop.
  if (isRunning(previous) && (processCommandLine(previous.pid) ?? dataDir).includes(dataDir)) {
    logger?.warn({ pid: previous.pid }, 'stopping the Temporal dev server a previous run left running');
    await stopProcess(previous, STOP, 'the previous Temporal dev server');
  }
  rmSync(file, { force: true });
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
  await clearLeftoverDevServer(opts.dataDir, opts.logger);
  if (await portInUse(opts.port)) throw new Error(`port ${opts.port} (TEMPORAL_PORT) is in use by another process`);
  const args = [
    'server', 'start-dev',
    '--db-filename', join(opts.dataDir, 'temporal.sqlite'),
    '--ip', ip,
    '--port', String(opts.port),
    '--namespace', opts.namespace,
    ...(opts.uiPort ? ['--ui-port', String(opts.uiPort)] : ['--headless']),
    ...DEV_SERVER_SEARCH_ATTRIBUTE_ARGS,
  ];
  const server = await startKept({
    command: exe.path,
    args,
    logFile: join(opts.dataDir, 'logs', 'temporal-dev-server.log'),
    stopSignals: STOP,
  }).catch((err: Error) => {
    throw new Error(`Temporal dev server did not start: ${err.message}; see logs/temporal-dev-server.log`, { cause: err });
  });
  const pidFile = join(opts.dataDir, PID_FILE);
  writeFileSync(pidFile, `${JSON.stringify(identityOf(server.pid))}\n`);
  const address = `${ip}:${opts.port}`;
  let exited: string | null = null;
  let stopping = false;
  void server.exited.then(({ code, signal, gaveUp }) => {
    exited = `exited with ${code ?? signal}`;
    if (gaveUp) opts.logger?.error({ server: 'temporal', code, signal }, 'Temporal dev server keeps exiting; its keeper gave up restarting it');
    else if (!stopping) opts.logger?.warn({ server: 'temporal', code, signal }, 'Temporal dev server exited');
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
        await server.stop();
        throw new Error(`Temporal dev server did not answer on ${address} within 60 s`, { cause: err });
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  const uiUrl = opts.uiPort ? `http://${ip}:${opts.uiPort}` : null;
  opts.logger?.info({ address, uiUrl, cli: exe.path, pid: server.pid }, 'Temporal dev server started');
  // From now on a dev server that dies under us (crash, OOM kill, an operator's kill) is started again on the same
  // SQLite file; the clients and workers reconnect by themselves.
  server.supervise({
    died: ({ code, signal, restartInMs }) =>
      opts.logger?.warn({ server: 'temporal', code, signal, restartInMs }, 'Temporal dev server exited unexpectedly; restarting it'),
    restarted: ({ pid, code, signal, restarts }) => {
      writeFileSync(pidFile, `${JSON.stringify(identityOf(pid))}\n`);
      opts.logger?.warn({ server: 'temporal', pid, code, signal, restarts }, 'Temporal dev server restarted');
    },
  });
  return {
    address,
    uiUrl,
    get pid() {
      return server.pid;
    },
    exited: server.exited,
    async stop() {
      stopping = true;
      await server.stop();
      // Only our own record: a later server on this data dir (a test's restart) may have replaced it.
      const recorded = (() => {
        try {
          return (JSON.parse(readFileSync(pidFile, 'utf8')) as ProcessIdentity).pid;
        } catch {
          return null;
        }
      })();
      if (recorded === server.pid) rmSync(pidFile, { force: true });
      opts.logger?.info({ pid: server.pid }, 'Temporal dev server stopped');
    },
  };
}
