/**
 * Prometheus metrics (`GET /metrics`): the service's own metrics (prom-client) followed by the Temporal SDK's
 * runtime metrics (`temporal_*`, exported by the SDK's Core on a loopback port, see app/runtime.ts).
 *
 * Every process has its own registry. With `npm start` the API and the workers share one process, so one
 * scrape sees everything. Run apart (`npm run api`, `npm run worker`), the API process's `/metrics` carries
 * the HTTP and snapshot-state metrics, while the backup counters and most `temporal_*` metrics live in the
 * worker process: expose them there with `startMetricsServer` (or scrape its SDK exporter directly by setting
 * `TEMPORAL_METRICS_BIND=0.0.0.0:<port>`).
 */
import { createServer, type Server } from 'node:http';
import type { Context, MiddlewareHandler } from 'hono';
import { matchedRoutes } from 'hono/route';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { BackupMetricsHooks } from '../activities/snapshot-activities.js';
import type { Queryable } from '../db/pool.js';
import { countSnapshotsByState } from '../db/snapshots.js';
import { SNAPSHOT_STATES } from '../domain/snapshot-states.js';
import { temporalSdkMetricsUrl } from '../app/runtime.js';

export interface VolsnapMetrics {
  registry: Registry;
  /** Snapshots per state, read from the database at scrape time. */
  snapshots: Gauge<'state'>;
  backupAttempts: Counter;
  backupFailures: Counter;
  backupBytes: Counter;
  backupDuration: Histogram<'outcome'>;
  httpDuration: Histogram<'method' | 'route' | 'status'>;
  /** What the backup activity calls (activities/snapshot-activities.ts `metrics` dependency). */
  backupHooks: Required<BackupMetricsHooks>;
}

/** A fresh registry with volsnap's metrics (and, by default, the Node.js process metrics). */
export function createMetrics(opts: { defaultMetrics?: boolean } = {}): VolsnapMetrics {
  const registry = new Registry();
  if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: registry });
  const snapshots = new Gauge({
    name: 'volsnap_snapshots',
    help: 'Snapshots by state (rows in the database, read at scrape time)',
    labelNames: ['state'] as const,
    registers: [registry],
  });
  const backupAttempts = new Counter({
    name: 'volsnap_backup_attempts_total',
    help: 'Backup attempts started (one per activity attempt)',
    registers: [registry],
  });
  const backupFailures = new Counter({
    name: 'volsnap_backup_failures_total',
    help: 'Backup attempts that failed (retried, or the last one)',
    registers: [registry],
  });
  const backupBytes = new Counter({
    name: 'volsnap_backup_bytes_total',
    help: 'Bytes written to secondary storage by successful backups',
    registers: [registry],
  });
  const backupDuration = new Histogram({
    name: 'volsnap_backup_duration_seconds',
    help: 'Duration of one backup attempt',
    labelNames: ['outcome'] as const,
    buckets: [0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600],
    registers: [registry],
  });
  const httpDuration = new Histogram({
    name: 'volsnap_http_request_duration_seconds',
    help: 'HTTP request duration by method, matched route and status',
    labelNames: ['method', 'route', 'status'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [registry],
  });
  return {
    registry,
    snapshots,
    backupAttempts,
    backupFailures,
    backupBytes,
    backupDuration,
    httpDuration,
    backupHooks: {
      backupStarted: () => backupAttempts.inc(),
      backupSucceeded: ({ bytes, durationSeconds }) => {
        backupBytes.inc(bytes);
        backupDuration.observe({ outcome: 'success' }, durationSeconds);
      },
      backupFailed: ({ durationSeconds }) => {
        backupFailures.inc();
        backupDuration.observe({ outcome: 'failure' }, durationSeconds);
      },
    },
  };
}

let processWide: VolsnapMetrics | undefined;

/** This process's metrics (one registry per process). */
export function processMetrics(): VolsnapMetrics {
  processWide ??= createMetrics();
  return processWide;
}

/** The route label: the matched route pattern (bounded cardinality), or `unmatched`. */
function routeOf(c: Context): string {
  const routes = matchedRoutes(c);
  const r = routes[c.req.routeIndex] ?? routes.at(-1);
  // Middleware (`app.use`) is registered for method ALL; a request that reached none of the real routes is
  // labelled `unmatched` rather than by its raw path.
  if (!r || r.method === 'ALL') return 'unmatched';
  return r.path;
}

/** Hono middleware recording `volsnap_http_request_duration_seconds`; mount it first: `app.use(metricsMiddleware())`. */
export function metricsMiddleware(metrics: VolsnapMetrics = processMetrics()): MiddlewareHandler {
  return async (c, next) => {
    const end = metrics.httpDuration.startTimer();
    try {
      await next();
    } finally {
      end({ method: c.req.method, route: routeOf(c), status: String(c.res.status) });
    }
  };
}

/** Reads the snapshot counts per state into the gauge (every state, zeros included). */
async function collectSnapshotStates(pool: Queryable, metrics: VolsnapMetrics): Promise<void> {
  const counts = await countSnapshotsByState(pool);
  // Set synchronously after the query, so concurrent scrapes never see a half-filled gauge.
  metrics.snapshots.reset();
  for (const state of SNAPSHOT_STATES) metrics.snapshots.set({ state }, counts.get(state) ?? 0);
}

/** The Temporal SDK's Prometheus text, or a comment saying why it is missing. */
async function sdkMetricsText(): Promise<string> {
  const url = temporalSdkMetricsUrl();
  if (!url) return '# Temporal SDK metrics are off in this process\n';
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
    if (!res.ok) return `# Temporal SDK metrics unavailable: HTTP ${res.status}\n`;
    const text = await res.text();
    return text.endsWith('\n') || text === '' ? text : `${text}\n`;
  } catch (err) {
    return `# Temporal SDK metrics unavailable: ${String((err as Error).message ?? err).replace(/\s+/g, ' ')}\n`;
  }
}

/** The whole exposition: volsnap's registry, then the Temporal SDK's metrics. */
export async function renderMetrics(pool: Queryable, metrics: VolsnapMetrics = processMetrics()): Promise<string> {
  let note = '';
  try {
    await collectSnapshotStates(pool, metrics);
  } catch (err) {
    note = `# volsnap_snapshots not refreshed: ${String((err as Error).message ?? err).replace(/\s+/g, ' ')}\n`;
  }
  const [own, sdk] = await Promise.all([metrics.registry.metrics(), sdkMetricsText()]);
  return `${own.endsWith('\n') ? own : `${own}\n`}${note}${sdk}`;
}

/** `GET /metrics` for Hono: `app.get('/metrics', metricsHandler(stack.pool))` (no authentication, as usual for Prometheus). */
export function metricsHandler(pool: Queryable, metrics: VolsnapMetrics = processMetrics()) {
  return async (c: Context): Promise<Response> => {
    const body = await renderMetrics(pool, metrics);
    return c.body(body, 200, { 'content-type': metrics.registry.contentType });
  };
}

/**
 * A bare HTTP server answering `GET /metrics`, for a process without the API (`npm run worker`), so its
 * backup counters and SDK metrics can be scraped too. Resolves once listening.
 */
export async function startMetricsServer(
  pool: Queryable,
  opts: { port: number; host?: string; metrics?: VolsnapMetrics },
): Promise<{ server: Server; port: number; close(): Promise<void> }> {
  const metrics = opts.metrics ?? processMetrics();
  const server = createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404).end();
      return;
    }
    renderMetrics(pool, metrics).then(
      (body) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(body),
      (err: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(String(err)),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host ?? '0.0.0.0', () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  return {
    server,
    port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
