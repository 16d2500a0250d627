/**
 * What `npm run cluster` takes from docker-compose.yml, so that the topology run here is the one compose runs:
 * the Temporal server version (the `temporalio/auto-setup` tag), the Temporal service's environment (database
 * plugin, database names, namespace, search-attribute setting, dynamic config path), the dynamic config itself,
 * PostgreSQL's server settings, the published ports and the volsnap services' environment keys.
 * test/unit/compose.test.ts checks that the cluster script uses each of them.
 */
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseDocument } from 'yaml';

export const ROOT = resolve(import.meta.dirname, '..', '..');
export const COMPOSE_FILE = join(ROOT, 'docker-compose.yml');

type Dict = Record<string, unknown>;
interface ComposeService {
  image?: string;
  command?: string | string[];
  environment?: Dict | string[];
  ports?: Array<string | Dict>;
}

/** Compose variable interpolation with nothing set in the environment: `${X:-default}` gives its default. */
export function interpolate(value: string, vars: Record<string, string | undefined> = {}): string {
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

export function environmentOf(service: ComposeService): Record<string, string> {
  const env = service.environment ?? {};
  if (Array.isArray(env)) return Object.fromEntries(env.map((kv) => [kv.split('=')[0]!, kv.slice(kv.indexOf('=') + 1)]));
  return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, v == null ? '' : String(v)]));
}

/** `[host_ip:]host:container[/proto]` → {host, container} ports. */
export function publishedPorts(service: ComposeService): Array<{ host: number; container: number }> {
  return (service.ports ?? []).map((p) => {
    if (typeof p === 'object') return { host: Number(p.published), container: Number(p.target) };
    const parts = interpolate(p).split('/')[0]!.split(':');
    return { host: Number(parts.at(-2) ?? parts.at(-1)), container: Number(parts.at(-1)) };
  });
}

export interface ComposeTopology {
  /** The Temporal server version: the tag of temporalio/auto-setup. */
  temporalVersion: string;
  /** The temporal service's environment (auto-setup's settings), compose defaults filled in. */
  temporalEnvironment: Record<string, string>;
  /** The dynamic config file's content (configs.temporal-dynamic-config). */
  dynamicConfig: string;
  /** PostgreSQL server settings from the postgres service's command (`-c name=value`). */
  postgresSettings: Record<string, string>;
  /** The Temporal frontend's port and the API's, as compose publishes them on the host. */
  ports: { temporalFrontend: number; api: number; temporalUi: number };
  /** The environment of the api and worker services (keys and compose defaults). */
  apiEnvironment: Record<string, string>;
  workerEnvironment: Record<string, string>;
  services: Record<string, ComposeService>;
}

export function readComposeTopology(file = COMPOSE_FILE, vars: Record<string, string | undefined> = {}): ComposeTopology {
  const doc = parseDocument(readFileSync(file, 'utf8'), { merge: true });
  if (doc.errors.length) throw new Error(`${file}: ${doc.errors.map((e) => e.message).join('; ')}`);
  const data = doc.toJS() as { services: Record<string, ComposeService>; configs?: Record<string, { content?: string }> };
  const services = data.services;
  const temporal = services.temporal!;
  const version = /^temporalio\/auto-setup:(\d+\.\d+\.\d+)$/.exec(temporal.image ?? '')?.[1];
  if (!version) throw new Error(`${file}: services.temporal.image is not temporalio/auto-setup:<x.y.z> (${temporal.image})`);
  const filled = (s: ComposeService) => Object.fromEntries(Object.entries(environmentOf(s)).map(([k, v]) => [k, interpolate(v, vars)]));
  const dynamicConfig = data.configs?.['temporal-dynamic-config']?.content;
  if (dynamicConfig === undefined) throw new Error(`${file}: configs.temporal-dynamic-config has no content`);
  const command = services.postgres?.command;
  const argv = typeof command === 'string' ? command.split(/\s+/) : (command ?? []);
  const postgresSettings: Record<string, string> = {};
  argv.forEach((a, i) => {
    if (a === '-c' && argv[i + 1]) {
      const [k, ...v] = argv[i + 1]!.split('=');
      postgresSettings[k!] = v.join('=');
    }
  });
  const port = (name: string, container: number) => {
    const p = publishedPorts(services[name]!).find((x) => x.container === container);
    if (!p) throw new Error(`${file}: ${name} does not publish ${container}`);
    return p.host;
  };
  return {
    temporalVersion: version,
    temporalEnvironment: filled(temporal),
    dynamicConfig,
    postgresSettings,
    ports: { temporalFrontend: port('temporal', 7233), api: port('api', Number(filled(services.api!).PORT)), temporalUi: port('temporal-ui', 8080) },
    apiEnvironment: filled(services.api!),
    workerEnvironment: filled(services.worker!),
    services,
  };
}
