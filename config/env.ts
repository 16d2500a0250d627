import { resolve } from 'node:path';
import { z } from 'zod';

const port = z.coerce.number().int().min(0).max(65_535);
const optionalString = z
  .string()
  .optional()
  .transform((v) => (v === '' ? undefined : v));

/** Process environment, parsed once at start-up (docs/design.md §9). */
export const EnvSchema = z.object({
  NODE_ENV: z.enum(['development', 'production', 'test']).default('development'),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  VOLSNAP_DATA_DIR: z.string().default('./.data'),
  PORT: port.default(8080),
  /**
   * Where the HTTP API listens. Loopback by default: API keys travel in clear over plain HTTP, so reaching it from
   * other machines is a choice (HOST=0.0.0.0, behind TLS: docs/security.md). Compose binds all addresses.
   */
  HOST: z.string().default('127.0.0.1'),
  ADMIN_API_KEY: optionalString,
  /** The admin's CloudStack key pair (/client/api); both or neither. Without them one is generated once. */
  ADMIN_CLOUDSTACK_API_KEY: optionalString,
  ADMIN_CLOUDSTACK_SECRET_KEY: optionalString,
  DATABASE_URL: optionalString,
  /** Connections per process; size it to backup.pool.size plus API concurrency. */
  DATABASE_POOL_MAX: z.coerce.number().int().min(1).max(1000).default(20),
  EMBEDDED_PG_PORT: port.default(54320),
  TEMPORAL_ADDRESS: optionalString,
  TEMPORAL_NAMESPACE: z.string().default('default'),
  TEMPORAL_PORT: port.default(7233),
  TEMPORAL_UI_PORT: port.default(8233),
  /** The Temporal Web UI as operators reach it (the console links snapshots to it); default: the dev server's. */
  TEMPORAL_UI_URL: optionalString,
  /** The web console as users reach it (Temporal's workflow details link back to it); default http://localhost:PORT. */
  PUBLIC_URL: optionalString,
  TEMPORAL_TLS_CERT_PATH: optionalString,
  TEMPORAL_TLS_KEY_PATH: optionalString,
  TEMPORAL_TLS_CA_PATH: optionalString,
  TEMPORAL_TLS_SERVER_NAME: optionalString,
  TEMPORAL_API_KEY: optionalString,
  TEMPORAL_TASK_QUEUE: z.string().default('volsnap'),
  TEMPORAL_BACKUP_TASK_QUEUE: z.string().default('volsnap-backup'),
  /** host:port for the Temporal SDK's Prometheus exporter (app/runtime.ts reads it before the env is parsed). */
  TEMPORAL_METRICS_BIND: optionalString,
  /** `npm run worker` only: serve this process's Prometheus metrics on this port. */
  METRICS_PORT: port.optional(),
  /** XenServer pool master (XenAPI over HTTPS); with these set, volumes with hypervisor XenServer are served. */
  XENSERVER_URL: optionalString,
  XENSERVER_USERNAME: optionalString,
  XENSERVER_PASSWORD: optionalString,
  /** Comma-separated SR uuids seeded as XenServer primary storage pools. */
  XENSERVER_SR_UUIDS: optionalString,
  /** PEM CA certificate for a host with a self-signed certificate. */
  XENSERVER_CA_FILE: optionalString,
  /**
   * How KVM VMs run: `libvirt`, as domains on their host's libvirt; `none`, as catalog records whose actions
   * change only their rows (storage-only use, and the test tiers that do not test hosts).
   */
  KVM_COMPUTE: z.enum(['libvirt', 'none']).default('libvirt'),
  /**
   * The libvirt that runs the KVM host's VMs (docs/design.md §15). Unset: `qemu:///system`, started by the
   * service when nothing answers there (root only).
   */
  LIBVIRT_URI: optionalString,
  /**
   * The KVM host a worker process is (docs/design.md §15): it runs that host's libvirt steps on its task queue
   * (`<TEMPORAL_TASK_QUEUE>-host-<name>`), connects the host's row to LIBVIRT_URI and runs its power sync. A
   * name not in the catalog is added as a KVM host. Unset: `npm start` is `kvm-host-1`; `npm run worker` is no
   * host (one worker per host sets it).
   */
  KVM_HOST: z
    .string()
    .regex(/^[a-z0-9][a-z0-9-]{0,62}$/, 'a host name: lower-case letters, digits and dashes')
    .optional(),
  /** How long a VM action's hypervisor step waits for its host's worker to take it before it is undone (503). */
  VM_HOST_TIMEOUT_SECONDS: z.coerce.number().int().min(1).max(600).default(30),
  /**
   * What KVM VMs boot: `auto`, the test guest (scripts/build-guest.sh, built by `npm run setup`) when it is
   * built, else their ROOT disk; `disk`, always their ROOT disk. volsnap's images start blank, so the guest is
   * their OS for the demo and the hypervisor tier (docs/design.md §15).
   */
  VM_BOOT: z.enum(['auto', 'disk']).default('auto'),
  /**
   * What KVM VMs run under: `auto`, KVM if a probe guest reaches user space under it in time, else TCG (probed
   * once per data dir and QEMU build, in the background: TCG until then); `kvm` or `qemu` (TCG) to decide.
   */
  VM_ACCELERATOR: z.enum(['auto', 'kvm', 'qemu']).default('auto'),
  /** Whether the test guest writes its checksummed workload to its data disk (vdb). */
  VM_GUEST_WORKLOAD: z.enum(['on', 'off']).default('on'),
  /** How long a stop waits for the guest to shut down (ACPI) before it powers the VM off. */
  VM_STOP_TIMEOUT_SECONDS: z.coerce.number().int().min(0).max(3600).default(60),
  /** How often a worker compares VMs' recorded power states with their hosts (0: never). */
  VM_POWER_SYNC_SECONDS: z.coerce.number().int().min(0).max(86_400).default(15),
  /** A VM still Starting or Stopping after this long is settled from its host's state (its caller died). */
  VM_ACTION_STALE_SECONDS: z.coerce.number().int().min(10).max(86_400).default(120),
  /** Caps each backup copy's read rate so background backups do not starve the VMs' I/O (unset: no cap). */
  BACKUP_RATE_LIMIT_BYTES_PER_SEC: z.coerce.number().int().positive().optional(),
  /**
   * On SIGTERM/SIGINT, how long running backup copies may go on before they are cancelled (the Worker's
   * shutdownGraceTime); the process exits by force a margin after it (app/process.ts).
   */
  WORKER_SHUTDOWN_GRACE_SECONDS: z.coerce.number().int().min(0).max(86_400).default(300),
  /**
   * Seconds a request's headers and body may take to arrive; a slower client gets 408 and is disconnected. The
   * answer is not timed: a synchronous snapshot may take as long as its backup. 0: no bound.
   */
  HTTP_BODY_TIMEOUT_SECONDS: z.coerce.number().int().min(0).max(3600).default(30),
  /** Requests per minute per API key (token bucket, per API process); 0: no limit. */
  API_RATE_LIMIT_PER_MINUTE: z.coerce.number().int().min(0).max(1_000_000).default(1200),
  /** Requests a key may send at once above the steady rate (the bucket's size). */
  API_RATE_LIMIT_BURST: z.coerce.number().int().min(1).max(1_000_000).default(200),
  /** Event streams (GET /api/v1/events/stream) open at once per account, per API process. */
  EVENT_STREAMS_PER_ACCOUNT: z.coerce.number().int().min(1).max(10_000).default(5),
});

/** The HTTP API's resource bounds (docs/security.md). */
export interface ApiLimits {
  /** ms for a request's headers and body to arrive; 0: unbounded. */
  bodyTimeoutMs: number;
  /** Requests per minute per API key; 0: unlimited. */
  ratePerMinute: number;
  rateBurst: number;
  streamsPerAccount: number;
}

export function apiLimitsFrom(env: Pick<Env, 'HTTP_BODY_TIMEOUT_SECONDS' | 'API_RATE_LIMIT_PER_MINUTE' | 'API_RATE_LIMIT_BURST' | 'EVENT_STREAMS_PER_ACCOUNT'>): ApiLimits {
  return {
    bodyTimeoutMs: env.HTTP_BODY_TIMEOUT_SECONDS * 1000,
    ratePerMinute: env.API_RATE_LIMIT_PER_MINUTE,
    rateBurst: env.API_RATE_LIMIT_BURST,
    streamsPerAccount: env.EVENT_STREAMS_PER_ACCOUNT,
  };
}

/**
 * Seconds the process may take beyond WORKER_SHUTDOWN_GRACE_SECONDS before it exits by force (app/process.ts):
 * the SDK's own force margin (app/workers.ts) plus stopping PostgreSQL and the Temporal dev server.
 */
export const FORCE_EXIT_MARGIN_SECONDS = 60;

export type Env = z.infer<typeof EnvSchema> & { dataDir: string };

/** Parses the environment; an invalid value stops start-up with a message naming the variable. */
export function loadEnv(source: NodeJS.ProcessEnv = process.env): Env {
  // An empty variable (`PORT=`, compose's `${VAR:-}`) means unset: its default applies.
  const present = Object.fromEntries(Object.entries(source).filter(([, v]) => v !== ''));
  const parsed = EnvSchema.safeParse(present);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join('.')}: ${i.message}`).join('\n');
    throw new Error(`invalid environment:\n${lines}`);
  }
  return { ...parsed.data, dataDir: resolve(parsed.data.VOLSNAP_DATA_DIR) };
}
