/**
 * The Temporal server of docker-compose.yml without Docker: the same Go program as the `temporalio/auto-setup`
 * image (built from the Go module proxy into `.tools/temporal-server/<version>/`), its schema tool
 * (`temporal-sql-tool`) run the way auto-setup runs it, the image's own config template
 * (`docker/config_template.yaml` of the server module) rendered from the same environment, and the four roles
 * (frontend, history, matching, worker) each in its own process, all from that one config file.
 */
import { spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { Connection } from '@temporalio/client';
import { msToTs } from '@temporalio/common/lib/time.js';
import { startKept, type KeptProcess } from '../../app/keeper.js';
import { ROOT } from './compose.js';

export const TEMPORAL_ROLES = ['frontend', 'history', 'matching', 'worker'] as const;
export type TemporalRole = (typeof TEMPORAL_ROLES)[number];

export interface TemporalBuild {
  version: string;
  dir: string;
  server: string;
  sqlTool: string;
  /** schema/postgresql of the server module. */
  schemaDir: string;
  /** docker/config_template.yaml of the server module: the config template of the temporalio images. */
  configTemplate: string;
}

export const buildDir = (version: string) => join(ROOT, '.tools', 'temporal-server', version);

function buildOf(version: string, dir = buildDir(version)): TemporalBuild {
  return {
    version,
    dir,
    server: join(dir, 'bin', 'temporal-server'),
    sqlTool: join(dir, 'bin', 'temporal-sql-tool'),
    schemaDir: join(dir, 'share', 'schema', 'postgresql'),
    configTemplate: join(dir, 'share', 'config_template.yaml'),
  };
}

/** The cached build of `version`, or null when it has not been built yet. */
export function cachedBuild(version: string, dir = buildDir(version)): TemporalBuild | null {
  const b = buildOf(version, dir);
  const ready = join(b.dir, 'READY');
  return existsSync(ready) && readFileSync(ready, 'utf8').trim() === version ? b : null;
}

function run(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string; log?: (line: string) => void } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const take = (d: Buffer) => {
      out += d.toString();
      for (const line of d.toString().split('\n')) if (line.trim()) opts.log?.(line);
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    child.once('error', reject);
    child.once('exit', (code, signal) =>
      code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} failed (${code ?? signal}): ${out.trim().split('\n').slice(-8).join(' | ')}`)),
    );
  });
}

/**
 * Builds the Temporal server and temporal-sql-tool of `version` with `go install` (GOPATH and GOCACHE under the
 * version's own folder in .tools), once: a finished build is marked READY and reused. The schema files and the
 * config template are copied out of the module cache beside the binaries.
 */
export async function ensureTemporalBuild(
  version: string,
  log: (line: string) => void = () => undefined,
  dir = buildDir(version),
): Promise<TemporalBuild> {
  const cached = cachedBuild(version, dir);
  if (cached) return cached;
  const b = buildOf(version, dir);
  const go = process.env.GO ?? 'go';
  await run(go, ['version']).catch((err: Error) => {
    throw new Error(`Go is needed to build the Temporal server ${version} (go install go.temporal.io/server/cmd/server@v${version}): ${err.message}`);
  });
  mkdirSync(b.dir, { recursive: true });
  const gopath = join(b.dir, 'gopath');
  const gobin = join(b.dir, 'gobin');
  const env = {
    ...process.env,
    GOPATH: gopath,
    GOCACHE: join(b.dir, 'gocache'),
    GOBIN: gobin,
    CGO_ENABLED: '0',
    // A module cache that `rm -rf` can delete.
    GOFLAGS: `${process.env.GOFLAGS ?? ''} -modcacherw`.trim(),
  };
  const started = Date.now();
  log(`building the Temporal server ${version} and temporal-sql-tool into ${b.dir} (go install; a few minutes, once)`);
  await run(go, ['install', `go.temporal.io/server/cmd/server@v${version}`, `go.temporal.io/server/cmd/tools/sql@v${version}`], { env, log });
  const mod = (await run(go, ['env', 'GOMODCACHE'], { env })).trim();
  const src = join(mod, 'go.temporal.io', `server@v${version}`);
  mkdirSync(join(b.dir, 'bin'), { recursive: true });
  renameSync(join(gobin, 'server'), b.server);
  renameSync(join(gobin, 'sql'), b.sqlTool);
  rmSync(join(b.dir, 'share'), { recursive: true, force: true });
  cpSync(join(src, 'schema', 'postgresql'), b.schemaDir, { recursive: true });
  cpSync(join(src, 'docker', 'config_template.yaml'), b.configTemplate);
  // The module and build caches (≈ 3 GB) are needed only to build; a new version builds into its own folder.
  rmSync(gopath, { recursive: true, force: true });
  rmSync(env.GOCACHE, { recursive: true, force: true });
  rmSync(gobin, { recursive: true, force: true });
  writeFileSync(join(b.dir, 'READY'), `${version}\n`);
  log(`built the Temporal server ${version} in ${Math.round((Date.now() - started) / 1000)} s`);
  return b;
}

/** Every port the four roles listen on. */
export interface TemporalPorts {
  frontendGrpc: number;
  frontendHttp: number;
  frontendMembership: number;
  historyGrpc: number;
  historyMembership: number;
  matchingGrpc: number;
  matchingMembership: number;
  workerGrpc: number;
  workerMembership: number;
}

/** The ports of the temporalio images (config_template.yaml's defaults). */
export const DEFAULT_TEMPORAL_PORTS: TemporalPorts = {
  frontendGrpc: 7233,
  frontendHttp: 7243,
  frontendMembership: 6933,
  historyGrpc: 7234,
  historyMembership: 6934,
  matchingGrpc: 7235,
  matchingMembership: 6935,
  workerGrpc: 7239,
  workerMembership: 6939,
};

/** The port that tells a role is up: its gRPC port; the worker role serves none, only its membership port. */
export const ROLE_READY_PORT: Record<TemporalRole, keyof TemporalPorts> = {
  frontend: 'frontendGrpc',
  history: 'historyGrpc',
  matching: 'matchingGrpc',
  worker: 'workerMembership',
};

/** The config template's variables for the ports (names as in docker/config_template.yaml). */
export function portEnvironment(p: TemporalPorts): Record<string, string> {
  return {
    FRONTEND_GRPC_PORT: String(p.frontendGrpc),
    FRONTEND_HTTP_PORT: String(p.frontendHttp),
    FRONTEND_MEMBERSHIP_PORT: String(p.frontendMembership),
    HISTORY_GRPC_PORT: String(p.historyGrpc),
    HISTORY_MEMBERSHIP_PORT: String(p.historyMembership),
    MATCHING_GRPC_PORT: String(p.matchingGrpc),
    MATCHING_MEMBERSHIP_PORT: String(p.matchingMembership),
    WORKER_GRPC_PORT: String(p.workerGrpc),
    WORKER_MEMBERSHIP_PORT: String(p.workerMembership),
  };
}

/**
 * The image renders its template with dockerize (`.Env.X`, and `default VALUE FALLBACK`); the server's own loader
 * renders a file that says `# enable-template` with sprig, whose `env "X"` reads the same variable and whose
 * `default` takes the fallback first. Only those two spellings change.
 */
export function renderableConfig(template: string): string {
  const rendered = template
    .replace(/default\s+\.Env\.([A-Za-z_][A-Za-z0-9_]*)\s+("[^"]*"|\$[A-Za-z_][A-Za-z0-9_]*)/g, 'default $2 (env "$1")')
    .replace(/\.Env\.([A-Za-z_][A-Za-z0-9_]*)/g, '(env "$1")');
  return `# enable-template\n${rendered}`;
}

export interface SqlTarget {
  host: string;
  port: number;
  user: string;
  password: string;
}

/**
 * What auto-setup does for PostgreSQL (`DB=postgres12`): create each database, set up the schema version table,
 * then apply every versioned schema. Repeatable: an existing database is kept and only updated.
 */
export async function setupSchemas(build: TemporalBuild, db: SqlTarget, env: Record<string, string>, existing: string[], log: (l: string) => void): Promise<void> {
  const plugin = env.DB ?? 'postgres12';
  const base = ['--plugin', plugin, '--ep', db.host, '-u', db.user, '-p', String(db.port)];
  const toolEnv = { ...process.env, SQL_PASSWORD: db.password };
  const v = plugin.startsWith('postgres') ? 'v12' : plugin;
  for (const [name, schema] of [
    [env.DBNAME ?? 'temporal', 'temporal'],
    [env.VISIBILITY_DBNAME ?? 'temporal_visibility', 'visibility'],
  ] as const) {
    if (!existing.includes(name)) await run(build.sqlTool, [...base, '--db', name, 'create'], { env: toolEnv });
    await run(build.sqlTool, [...base, '--db', name, 'setup-schema', '-v', '0.0'], { env: toolEnv });
    await run(build.sqlTool, [...base, '--db', name, 'update-schema', '-d', join(build.schemaDir, v, schema, 'versioned')], { env: toolEnv });
    log(`database ${name}: schema ${schema} up to date`);
  }
}

export function portOpen(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host, port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export interface RoleProcess {
  role: TemporalRole;
  kept: KeptProcess;
}

/** Starts one role from the config dir; resolves once it accepts connections (ROLE_READY_PORT). */
export async function startRole(opts: {
  build: TemporalBuild;
  root: string;
  role: TemporalRole;
  env: Record<string, string>;
  ports: TemporalPorts;
  logFile: string;
  timeoutMs?: number;
}): Promise<RoleProcess> {
  const kept = await startKept({
    command: opts.build.server,
    // As the image's start script: `temporal-server --env docker start --service <role>` (config/docker.yaml).
    args: ['--root', opts.root, '--config', 'config', '--env', 'docker', 'start', '--service', opts.role],
    env: opts.env,
    logFile: opts.logFile,
    stopSignals: [
      ['SIGTERM', 20_000],
      ['SIGKILL', 5_000],
    ],
  });
  let exited = false;
  void kept.exited.then(() => (exited = true));
  const port = opts.ports[ROLE_READY_PORT[opts.role]];
  const deadline = Date.now() + (opts.timeoutMs ?? 90_000);
  while (!(await portOpen(port))) {
    if (exited) throw new Error(`Temporal ${opts.role} exited during start-up; see ${opts.logFile}`);
    if (Date.now() > deadline) {
      await kept.stop();
      throw new Error(`Temporal ${opts.role} did not listen on ${port}; see ${opts.logFile}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  return { role: opts.role, kept };
}

/**
 * Registers the namespace as auto-setup does (`temporal operator namespace create --retention`), unless it
 * exists; then waits until the frontend knows it.
 */
export async function registerNamespace(address: string, namespace: string, retention: string, log: (l: string) => void): Promise<void> {
  const seconds = parseDuration(retention);
  const deadline = Date.now() + 120_000;
  for (;;) {
    let connection: Connection | undefined;
    try {
      connection = await Connection.connect({ address, connectTimeout: 2000 });
      const exists = await connection.workflowService.describeNamespace({ namespace }).then(() => true, (err: { code?: number }) => {
        if (err?.code === 5 /* NOT_FOUND */) return false;
        throw err;
      });
      if (exists) return;
      await connection.workflowService
        .registerNamespace({ namespace, workflowExecutionRetentionPeriod: msToTs(seconds * 1000), description: 'volsnap' })
        .catch((err: { code?: number }) => {
          if (err?.code !== 6 /* ALREADY_EXISTS */) throw err;
        });
      log(`registered namespace ${namespace} (retention ${retention})`);
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`could not register namespace ${namespace} on ${address}`, { cause: err });
      await new Promise((r) => setTimeout(r, 1000));
    } finally {
      await connection?.close().catch(() => undefined);
    }
  }
}

function parseDuration(d: string): number {
  const m = /^(\d+)(s|m|h|d)?$/.exec(d.trim());
  if (!m) throw new Error(`cannot read duration ${d}`);
  return Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86_400 }[(m[2] ?? 's') as 's'];
}
