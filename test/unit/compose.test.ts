/**
 * docker-compose.yml, Dockerfile and .dockerignore, checked without a Docker engine: what each file promises
 * (services, pinned images, environment the service knows, ports and addresses that agree, start order, a
 * non-root image with qemu-utils) is read from the files themselves.
 *
 * `docker compose config` needs no engine, only the Compose plugin: that one check is registered only when
 * `docker compose version` works on the machine running the tests (it is absent on the project's machines, which
 * have the docker CLI without the plugin), so a run never reports it as skipped.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseDocument } from 'yaml';
import { EnvSchema, FORCE_EXIT_MARGIN_SECONDS } from '../../config/env.js';
import { readComposeTopology } from '../../scripts/cluster/compose.js';
import { buildDir, cachedBuild, DEFAULT_TEMPORAL_PORTS } from '../../scripts/cluster/temporal.js';
import {
  apiEnvironment,
  commonEnvironment,
  defaultClusterPorts,
  temporalRoleEnvironment,
  workerEnvironment,
  writeTemporalConfig,
} from '../../scripts/cluster/topology.js';

const ROOT = resolve(import.meta.dirname, '..', '..');
const COMPOSE_FILE = join(ROOT, 'docker-compose.yml');
const DOCKERFILE = join(ROOT, 'Dockerfile');
const DOCKERIGNORE = join(ROOT, '.dockerignore');

type Dict = Record<string, unknown>;
interface Service {
  image?: string;
  build?: string | Dict;
  command?: string | string[];
  environment?: Dict | string[];
  ports?: Array<string | Dict>;
  volumes?: Array<string | Dict>;
  depends_on?: string[] | Record<string, { condition?: string }>;
  healthcheck?: { test?: string | string[]; disable?: boolean };
  stop_grace_period?: string;
}

const APP_SERVICES = ['api', 'worker'] as const;
const REQUIRED_SERVICES = ['postgres', 'temporal', 'temporal-ui', ...APP_SERVICES];

function loadCompose(): { services: Record<string, Service>; volumes: Dict; errors: string[] } {
  // Merge keys (`<<: *anchor`) are part of the Compose format.
  const doc = parseDocument(readFileSync(COMPOSE_FILE, 'utf8'), { merge: true });
  const data = (doc.toJS() ?? {}) as { services?: Record<string, Service>; volumes?: Dict };
  return { services: data.services ?? {}, volumes: data.volumes ?? {}, errors: doc.errors.map((e) => e.message) };
}

/** Compose variable interpolation with nothing set in the environment: `${X:-default}` gives its default. */
function interpolate(value: string, vars: Record<string, string> = {}): string {
  return value
    .replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}/g, (_m, name: string, op: string | undefined, arg: string | undefined) => {
      const set = vars[name];
      if (op === ':-') return set ? set : (arg ?? '');
      if (op === '-') return set ?? arg ?? '';
      if (op === ':?' || op === '?') {
        if (set === undefined) throw new Error(`compose needs ${name}: ${arg}`);
        return set;
      }
      return set ?? '';
    })
    .replace(/\$\$/g, '$');
}

function environmentOf(service: Service): Record<string, string> {
  const env = service.environment ?? {};
  if (Array.isArray(env)) {
    return Object.fromEntries(env.map((kv) => [kv.split('=')[0]!, kv.slice(kv.indexOf('=') + 1)]));
  }
  return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, v == null ? '' : String(v)]));
}

/** `[host_ip:]host:container[/proto]` (or the long form) → the container ports a service publishes. */
function containerPorts(service: Service): number[] {
  return (service.ports ?? []).map((p) => {
    if (typeof p === 'object') return Number(p.target);
    const spec = interpolate(p).split('/')[0]!;
    return Number(spec.split(':').at(-1));
  });
}

function hostPort(address: string): { host: string; port: number } {
  const i = address.lastIndexOf(':');
  return { host: address.slice(0, i), port: Number(address.slice(i + 1)) };
}

/** `name[:tag][@digest]` → whether a tag (not `latest`) or a digest pins it. */
function isPinned(image: string): boolean {
  if (image.includes('@sha256:')) return true;
  const lastSegment = image.split('/').at(-1)!;
  const tag = lastSegment.includes(':') ? lastSegment.split(':').at(-1)! : '';
  return tag !== '' && tag !== 'latest' && !tag.includes('$');
}

/**
 * The package.json script a command runs: `npm run <script>`, or the script's own `node --import tsx <entry>`
 * (run directly, so node is the process that receives the signals).
 */
function commandScript(command: string | string[] | undefined): string | undefined {
  const argv = typeof command === 'string' ? command.split(/\s+/) : (command ?? []);
  if (argv[0] === 'npm' && argv[1] === 'run') return argv.filter((a) => !a.startsWith('-'))[2];
  if (argv[0] === 'node' && argv[1] === '--import' && argv[2] === 'tsx' && argv.length === 4) {
    return Object.entries(scripts).find(([, cmd]) => cmd === `node --import tsx ${argv[3]}`)?.[0];
  }
  return undefined;
}

/** The Dockerfile's instructions, continuation lines joined and comments dropped. */
function dockerfileInstructions(): Array<{ op: string; args: string }> {
  const lines = readFileSync(DOCKERFILE, 'utf8')
    .replace(/\\\r?\n/g, ' ')
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  return lines.map((l) => {
    const [op, ...rest] = l.split(/\s+/);
    return { op: op!.toUpperCase(), args: rest.join(' ') };
  });
}

const scripts = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts;

describe('docker-compose.yml', () => {
  const { services, volumes, errors } = loadCompose();

  it('parses as YAML', () => {
    expect(errors).toEqual([]);
    expect(Object.keys(services).length).toBeGreaterThan(0);
  });

  it('has every service the topology needs', () => {
    expect(Object.keys(services)).toEqual(expect.arrayContaining(REQUIRED_SERVICES));
  });

  it('pins every image tag (no `latest`, no missing tag)', () => {
    for (const [name, s] of Object.entries(services)) {
      if (s.image === undefined) {
        expect(s.build, `${name} has neither image nor build`).toBeDefined();
        continue;
      }
      expect(isPinned(s.image), `${name}: ${s.image}`).toBe(true);
    }
    expect(services.temporal!.image).toMatch(/^temporalio\/auto-setup:\d+\.\d+\.\d+$/);
    expect(services['temporal-ui']!.image).toMatch(/^temporalio\/ui:\d+\.\d+\.\d+$/);
    expect(services.postgres!.image).toMatch(/^postgres:\d+\.\d+(-alpine)?$/);
  });

  it('builds api and worker from the Dockerfile as one image', () => {
    for (const name of APP_SERVICES) {
      const build = services[name]!.build;
      const context = typeof build === 'string' ? build : (build?.context as string | undefined);
      expect(context, name).toBe('.');
      if (typeof build === 'object' && build.dockerfile) expect(build.dockerfile).toBe('Dockerfile');
    }
    expect(services.api!.image).toBe(services.worker!.image);
  });

  describe.each(APP_SERVICES)('%s environment', (name) => {
    const env = environmentOf(services[name]!);

    it('sets only variables config/env.ts knows', () => {
      const known = Object.keys(EnvSchema.shape);
      expect(Object.keys(env).filter((k) => !known.includes(k))).toEqual([]);
    });

    it('parses with the env schema once compose fills in its defaults', () => {
      const parsed = EnvSchema.safeParse(Object.fromEntries(Object.entries(env).map(([k, v]) => [k, interpolate(v)])));
      expect(parsed.success, parsed.error?.message).toBe(true);
    });

    it('points at the external PostgreSQL and Temporal (never the embedded ones)', () => {
      expect(env.DATABASE_URL).toBeTruthy();
      expect(env.TEMPORAL_ADDRESS).toBeTruthy();
      expect(env.VOLSNAP_DATA_DIR).toMatch(/^\//);
    });
  });

  it("gives the worker a stop_grace_period above its drain grace plus the service's force-exit margin", () => {
    const seconds = (d: string) =>
      [...d.matchAll(/(\d+(?:\.\d+)?)(h|m|s|ms|us)/g)].reduce((t, [, n, u]) => t + Number(n) * { h: 3600, m: 60, s: 1, ms: 1e-3, us: 1e-6 }[u as 'h']!, 0);
    const worker = services.worker!;
    const grace = EnvSchema.parse(Object.fromEntries(Object.entries(environmentOf(worker)).map(([k, v]) => [k, interpolate(v)]))).WORKER_SHUTDOWN_GRACE_SECONDS;
    expect(worker.stop_grace_period).toBeTruthy();
    expect(seconds(worker.stop_grace_period!)).toBeGreaterThan(grace + FORCE_EXIT_MARGIN_SECONDS);
  });

  it('api and worker agree on data dir, database, Temporal address and namespace', () => {
    const api = environmentOf(services.api!);
    const worker = environmentOf(services.worker!);
    for (const key of ['VOLSNAP_DATA_DIR', 'DATABASE_URL', 'TEMPORAL_ADDRESS', 'TEMPORAL_NAMESPACE']) {
      expect(worker[key], key).toBe(api[key]);
    }
  });

  it('api and worker mount the same named storage volumes at the same paths, under VOLSNAP_DATA_DIR', () => {
    const mounts = (s: Service) =>
      (s.volumes ?? []).map((v) => (typeof v === 'string' ? v : `${String(v.source)}:${String(v.target)}`)).sort();
    const api = mounts(services.api!);
    expect(api).toEqual(mounts(services.worker!));
    const dataDir = environmentOf(services.api!).VOLSNAP_DATA_DIR!;
    // db/catalog.ts seeds the pool and image store paths as <data dir>/primary/... and <data dir>/secondary.
    for (const sub of ['primary', 'secondary']) {
      const mount = api.find((m) => m.split(':')[1] === `${dataDir}/${sub}`);
      expect(mount, `${dataDir}/${sub} is mounted`).toBeDefined();
      expect(Object.keys(volumes), `volume ${mount!.split(':')[0]} is declared`).toContain(mount!.split(':')[0]);
    }
  });

  it('the API listens on the container port it publishes, and its health check asks that port', () => {
    const env = environmentOf(services.api!);
    const port = Number(interpolate(env.PORT!));
    expect(containerPorts(services.api!)).toContain(port);
    expect(JSON.stringify(services.api!.healthcheck?.test)).toContain(`:${port}/healthz`);
  });

  it("TEMPORAL_ADDRESS of api, worker and UI is the temporal service's frontend port", () => {
    const temporalPorts = containerPorts(services.temporal!);
    for (const name of [...APP_SERVICES, 'temporal-ui']) {
      const { host, port } = hostPort(interpolate(environmentOf(services[name]!).TEMPORAL_ADDRESS!));
      expect(host, name).toBe('temporal');
      expect(temporalPorts, name).toContain(port);
    }
    expect(JSON.stringify(services.temporal!.healthcheck?.test)).toContain('temporal:7233');
  });

  it("DATABASE_URL is the postgres service's database, user and password; Temporal uses the same server", () => {
    const pg = environmentOf(services.postgres!);
    const url = new URL(interpolate(environmentOf(services.api!).DATABASE_URL!));
    expect(url.hostname).toBe('postgres');
    expect(Number(url.port || 5432)).toBe(5432);
    expect(url.pathname.slice(1)).toBe(interpolate(pg.POSTGRES_DB!));
    expect(decodeURIComponent(url.username)).toBe(interpolate(pg.POSTGRES_USER!));
    expect(decodeURIComponent(url.password)).toBe(interpolate(pg.POSTGRES_PASSWORD!));
    // The same with a password set from outside.
    const vars = { POSTGRES_PASSWORD: 's3cret' };
    expect(new URL(interpolate(environmentOf(services.api!).DATABASE_URL!, vars)).password).toBe(interpolate(pg.POSTGRES_PASSWORD!, vars));

    const temporal = environmentOf(services.temporal!);
    expect(temporal.POSTGRES_SEEDS).toBe('postgres');
    expect(interpolate(temporal.POSTGRES_PWD!, vars)).toBe(interpolate(pg.POSTGRES_PASSWORD!, vars));
    expect(temporal.POSTGRES_USER).toBe(pg.POSTGRES_USER);
    // Separate databases on the one server.
    const dbs = [temporal.DBNAME ?? 'temporal', temporal.VISIBILITY_DBNAME ?? 'temporal_visibility', pg.POSTGRES_DB];
    expect(new Set(dbs).size).toBe(3);
  });

  it('the namespace Temporal creates is the one volsnap uses', () => {
    const temporal = environmentOf(services.temporal!);
    expect(interpolate(temporal.DEFAULT_NAMESPACE ?? 'default')).toBe(interpolate(environmentOf(services.api!).TEMPORAL_NAMESPACE ?? 'default'));
  });

  it('depends_on names existing services, and waits only on services with a health check', () => {
    for (const [name, s] of Object.entries(services)) {
      const deps: Record<string, { condition?: string }> = Array.isArray(s.depends_on)
        ? Object.fromEntries(s.depends_on.map((d) => [d, {}]))
        : (s.depends_on ?? {});
      for (const [dep, opts] of Object.entries(deps)) {
        expect(Object.keys(services), `${name} depends on ${dep}`).toContain(dep);
        if (opts.condition === 'service_healthy') {
          const hc = services[dep]!.healthcheck;
          expect(hc?.test && !hc.disable, `${dep} (waited on by ${name}) has a health check`).toBeTruthy();
        }
      }
    }
    for (const name of [...APP_SERVICES, 'temporal', 'temporal-ui']) {
      const deps = services[name]!.depends_on as Record<string, { condition?: string }>;
      const needs = name === 'temporal' ? ['postgres'] : name === 'temporal-ui' ? ['temporal'] : ['postgres', 'temporal'];
      for (const dep of needs) expect(deps?.[dep]?.condition, `${name} waits for ${dep}`).toBe('service_healthy');
    }
  });

  it('runs api and worker as their package.json scripts do (`npm run api`, `npm run worker`)', () => {
    expect(commandScript(services.api!.command)).toBe('api');
    expect(commandScript(services.worker!.command)).toBe('worker');
    for (const name of APP_SERVICES) expect(scripts[commandScript(services[name]!.command)!], name).toBeDefined();
  });

  if (spawnSync('docker', ['compose', 'version'], { stdio: 'ignore' }).status === 0) {
    it('`docker compose config -q` accepts it', () => {
      const r = spawnSync('docker', ['compose', '-f', COMPOSE_FILE, 'config', '-q'], { encoding: 'utf8', cwd: ROOT });
      expect(r.status, r.stderr).toBe(0);
    });
  }
});

describe('Dockerfile', () => {
  it('exists, with a .dockerignore beside it', () => {
    expect(existsSync(DOCKERFILE)).toBe(true);
    expect(existsSync(DOCKERIGNORE)).toBe(true);
  });

  const instructions = existsSync(DOCKERFILE) ? dockerfileInstructions() : [];
  const args = new Map<string, string>();
  for (const { op, args: a } of instructions) {
    if (op === 'FROM') break;
    if (op === 'ARG' && a.includes('=')) args.set(a.split('=')[0]!, a.slice(a.indexOf('=') + 1));
  }
  const froms = instructions.filter((i) => i.op === 'FROM').map((i) => i.args.split(/\s+/)[0]!);
  const stages = instructions.filter((i) => i.op === 'FROM').map((i) => i.args.split(/\s+as\s+/i)[1]?.trim());
  const lastStage = instructions.slice(instructions.map((i) => i.op).lastIndexOf('FROM'));

  it('is multi-stage, from pinned base images', () => {
    expect(froms.length).toBeGreaterThanOrEqual(2);
    for (const from of froms) {
      if (stages.includes(from)) continue;
      const image = from.replace(/\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?/g, (_m, n: string) => args.get(n) ?? '');
      expect(isPinned(image), `FROM ${from} (${image})`).toBe(true);
    }
  });

  it('runs as a non-root user', () => {
    const users = lastStage.filter((i) => i.op === 'USER').map((i) => i.args.split(':')[0]);
    expect(users.length).toBeGreaterThan(0);
    expect(['root', '0']).not.toContain(users.at(-1));
  });

  it('installs qemu-utils (qemu-img) in the image it runs', () => {
    const runs = lastStage.filter((i) => i.op === 'RUN').map((i) => i.args);
    expect(runs.some((r) => /apt-get install/.test(r) && /\bqemu-utils\b/.test(r))).toBe(true);
  });

  it('its CMD runs a package.json script (exec form, so the signals reach node), and tsx is a runtime dependency', () => {
    const cmd = lastStage.filter((i) => i.op === 'CMD').at(-1);
    expect(cmd).toBeDefined();
    const argv = JSON.parse(cmd!.args) as string[];
    const script = commandScript(argv);
    expect(script, cmd!.args).toBeDefined();
    expect(scripts[script!]).toMatch(/^node --import tsx /);
    expect(existsSync(join(ROOT, argv.at(-1)!))).toBe(true);
    // The image installs with --omit=dev: what runs the TypeScript must be a runtime dependency.
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { dependencies: Dict };
    expect(Object.keys(pkg.dependencies)).toContain('tsx');
    const install = instructions.find((i) => i.op === 'RUN' && /npm ci/.test(i.args));
    expect(install?.args).toMatch(/--omit=dev/);
  });

  it('copies only files that exist, and .dockerignore keeps out local state but not what the service runs', () => {
    for (const { args: a } of instructions.filter((i) => i.op === 'COPY' && !/--from=/.test(i.args))) {
      const parts = a.split(/\s+/).filter((p) => !p.startsWith('--'));
      for (const src of parts.slice(0, -1)) expect(existsSync(join(ROOT, src)), `COPY ${src}`).toBe(true);
    }
    const patterns = readFileSync(DOCKERIGNORE, 'utf8')
      .split(/\r?\n/)
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('#'));
    const ignored = (path: string) =>
      patterns.some((p) => {
        const re = new RegExp(`^${p.replace(/^\//, '').replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*')}(/|$)`);
        return re.test(path);
      });
    for (const path of ['node_modules', '.git', '.data', '.tools']) expect(ignored(path), `${path} is ignored`).toBe(true);
    for (const path of ['package.json', 'package-lock.json', 'tsconfig.json', 'api/main.ts', 'worker/worker-main.ts', 'workflows/index.ts', 'db/migrations', 'config/env.ts']) {
      expect(ignored(path), `${path} is in the build context`).toBe(false);
      expect(existsSync(join(ROOT, path)), path).toBe(true);
    }
  });
});

/**
 * `npm run cluster` (scripts/cluster.ts) runs this compose file's topology without Docker and the cluster tier
 * (test/cluster) tests it: both read their settings from docker-compose.yml itself (scripts/cluster/compose.ts).
 * These checks keep the two from drifting: what passed there is what compose runs.
 */
describe('npm run cluster agrees with docker-compose.yml', () => {
  const compose = readComposeTopology();
  const { services } = loadCompose();
  const ports = defaultClusterPorts(compose);
  const dynamicConfigPath = '/tmp/volsnap-cluster/temporal/dynamicconfig/volsnap.yaml';
  const roleEnv = temporalRoleEnvironment(compose, ports, dynamicConfigPath, 'default');
  const common = commonEnvironment(compose, '/data', 'postgres://u:p@127.0.0.1:1/volsnap', '127.0.0.1:7233', 'default');

  it('is a package.json script, and npm run setup builds its Temporal server', () => {
    expect(scripts.cluster).toBe('node --import tsx scripts/cluster.ts');
    expect(readFileSync(join(ROOT, 'scripts', 'setup.sh'), 'utf8')).toMatch(/scripts\/cluster\.ts --build-only/);
  });

  it('builds and runs the Temporal server version of the auto-setup image, cached under that version', () => {
    expect(services.temporal!.image).toBe(`temporalio/auto-setup:${compose.temporalVersion}`);
    expect(buildDir(compose.temporalVersion)).toBe(join(ROOT, '.tools', 'temporal-server', compose.temporalVersion));
  });

  it("gives the four roles the temporal service's environment, pointed only at the local database, ports and files", () => {
    const composeEnv = Object.fromEntries(Object.entries(environmentOf(services.temporal!)).map(([k, v]) => [k, interpolate(v)]));
    const localised = ['DB_PORT', 'POSTGRES_SEEDS', 'POSTGRES_USER', 'POSTGRES_PWD', 'DYNAMIC_CONFIG_FILE_PATH'];
    for (const [key, value] of Object.entries(composeEnv)) {
      expect(roleEnv[key], key).toBeDefined();
      if (!localised.includes(key)) expect(roleEnv[key], key).toBe(value);
    }
    expect(roleEnv.DB).toBe('postgres12');
    expect(roleEnv.DYNAMIC_CONFIG_FILE_PATH).toBe(dynamicConfigPath);
    // Compose's file lives at the path it gives DYNAMIC_CONFIG_FILE_PATH; the cluster's has the same name.
    const target = (services.temporal as { configs?: Array<{ source: string; target: string }> }).configs?.find((c) => c.source === 'temporal-dynamic-config')?.target;
    expect(target).toBe(composeEnv.DYNAMIC_CONFIG_FILE_PATH);
    expect(target!.split('/').at(-1)).toBe(dynamicConfigPath.split('/').at(-1));
  });

  it("writes compose's dynamic config verbatim, with Update-with-Start's two APIs switched on", () => {
    const dir = mkdtempSync(join(tmpdir(), 'volsnap-compose-'));
    try {
      const written = writeTemporalConfig(dir, compose, 'log:\n    level: {{ default .Env.LOG_LEVEL "info" }}\n');
      const dynamic = readFileSync(written.dynamicConfigPath, 'utf8');
      expect(dynamic).toBe(compose.dynamicConfig);
      const parsed = parseDocument(dynamic).toJS() as Record<string, Array<{ value: unknown }>>;
      for (const key of ['frontend.enableUpdateWorkflowExecution', 'frontend.enableExecuteMultiOperation']) {
        expect(parsed[key]?.map((v) => v.value), key).toEqual([true]);
      }
      // The image's template, rendered by the server itself: dockerize's spelling turned into sprig's.
      expect(readFileSync(written.configFile, 'utf8')).toBe('# enable-template\nlog:\n    level: {{ default "info" (env "LOG_LEVEL") }}\n');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  const build = cachedBuild(compose.temporalVersion);
  if (build) {
    // Registered only where the server is built (npm run setup), as the `docker compose config` check above.
    it('the dynamic config passes the Temporal server’s own validation (known keys and types)', () => {
      const dir = mkdtempSync(join(tmpdir(), 'volsnap-compose-'));
      try {
        const file = join(dir, 'volsnap.yaml');
        writeFileSync(file, compose.dynamicConfig);
        const r = spawnSync(build.server, ['validate-dynamic-config', file], { encoding: 'utf8' });
        expect(r.status, r.stdout + r.stderr).toBe(0);
        expect(r.stdout + r.stderr).not.toMatch(/warning|unregistered|error|invalid/i);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }

  it('gives the APIs and the workers exactly the environment keys compose gives them, with its fixed values', () => {
    const api = apiEnvironment(common, 8081, 'key');
    const worker = workerEnvironment(common, 9464, compose);
    expect(Object.keys(api).sort()).toEqual(Object.keys(environmentOf(services.api!)).sort());
    expect(Object.keys(worker).sort()).toEqual(Object.keys(environmentOf(services.worker!)).sort());
    for (const [ours, name] of [[api, 'api'], [worker, 'worker']] as const) {
      const theirs = Object.fromEntries(Object.entries(environmentOf(services[name]!)).map(([k, v]) => [k, interpolate(v)]));
      for (const key of ['NODE_ENV', 'LOG_LEVEL', 'TEMPORAL_NAMESPACE', 'WORKER_SHUTDOWN_GRACE_SECONDS']) {
        if (key in theirs) expect(ours[key], `${name} ${key}`).toBe(theirs[key]);
      }
      expect(EnvSchema.safeParse(ours).success, name).toBe(true);
    }
  });

  it('publishes the ports compose publishes: Temporal frontend 7233, API 8080 (one port in front of the APIs)', () => {
    expect(ports.temporal.frontendGrpc).toBe(compose.ports.temporalFrontend);
    expect(ports.api).toBe(compose.ports.api);
    expect(DEFAULT_TEMPORAL_PORTS.frontendGrpc).toBe(7233);
    expect(JSON.stringify(services.temporal!.healthcheck?.test)).toContain(`:${DEFAULT_TEMPORAL_PORTS.frontendGrpc}`);
    // Temporal keeps its roles' ports in a smallint column: none may be above 32767.
    for (const [name, port] of Object.entries(ports.temporal)) expect(port, name).toBeLessThan(32_768);
    const all = [ports.postgres, ports.api, ...ports.apis, ...ports.workerMetrics, ...Object.values(ports.temporal)];
    expect(new Set(all).size).toBe(all.length);
    expect(ports.workerMetrics[0]).toBe(Number(interpolate(environmentOf(services.worker!).METRICS_PORT!)));
  });

  it("runs PostgreSQL with compose's server settings, enough connections for four roles apart and four volsnap processes", () => {
    expect(compose.postgresSettings.max_connections).toBeDefined();
    const poolMax = EnvSchema.parse({}).DATABASE_POOL_MAX;
    // config_template.yaml's defaults: SQL_MAX_CONNS 20 (temporal), SQL_VIS_MAX_CONNS 10 (visibility), per role.
    const temporalConnections = 4 * (20 + 10);
    const reserved = 3;
    expect(Number(compose.postgresSettings.max_connections)).toBeGreaterThanOrEqual(temporalConnections + 4 * poolMax + reserved);
  });
});
