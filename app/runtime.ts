import { spawnSync } from 'node:child_process';
import type { ActivityInterceptorsFactory } from '@temporalio/worker';
import { DefaultLogger, Runtime, type LogEntry, type LogLevel } from '@temporalio/worker';
import type { Logger } from 'pino';
import { withLogContext } from '../observability/logger.js';
import { snapshotIdOfWorkflow } from '../workflows/definitions.js';

let installed = false;
/** snapshotId → volumeId, learnt by the activity log context, for the SDK's own lines about a snapshot. */
const knownVolumes = new Map<string, string>();
const KNOWN_VOLUMES_MAX = 10_000;

function rememberVolume(snapshotId: string, volumeId: string): void {
  knownVolumes.delete(snapshotId);
  knownVolumes.set(snapshotId, volumeId);
  if (knownVolumes.size > KNOWN_VOLUMES_MAX) knownVolumes.delete(knownVolumes.keys().next().value!);
}
let sdkMetricsUrl: string | null = null;

/** What the SDK says when a worker has no workflows (node_modules/@temporalio/worker, Worker.workflow$). */
const NO_WORKFLOWS_MESSAGE = 'No workflows registered, not polling for workflow tasks';
/** Task queues whose workers have activities only, on purpose (the backup worker's). */
const activityOnlyQueues = new Set<string>();

/** Declares `taskQueue`'s worker activity-only: the SDK's "no workflows registered" warning for it is expected. */
export function declareActivityOnlyQueue(taskQueue: string): void {
  activityOnlyQueues.add(taskQueue);
}

const LEVELS = { TRACE: 'trace', DEBUG: 'debug', INFO: 'info', WARN: 'warn', ERROR: 'error' } as const;


/** The lowest SDK level worth producing for a pino level (pino filters again). */
function sdkLevel(pinoLevel: string): LogLevel {
  if (pinoLevel === 'trace') return 'TRACE';
  if (pinoLevel === 'debug') return 'DEBUG';
  return 'INFO';
}

/** A TCP port that was free a moment ago on 127.0.0.1, found synchronously (a tiny child process binds port 0). */
function freeLoopbackPortSync(): number | null {
  const script =
    "const s=require('net').createServer();s.listen(0,'127.0.0.1',()=>{process.stdout.write(String(s.address().port));s.close()})";
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 10_000, env: { PATH: process.env.PATH ?? '' } });
  const port = Number(r.stdout);
  return r.status === 0 && Number.isInteger(port) && port > 0 ? port : null;
}

/**
 * Routes the Temporal SDK's logs through our pino logger (once per process): the TypeScript side (workflow
 * `log.*`, activity context logs, worker state) and, by forwarding, the native Core's own logs. Lines about a
 * snapshot's workflow (`snapshot-<id>`) also carry `snapshotId` (and `volumeId` once an activity of that
 * snapshot ran in this process); errors go under `err`, so they are written with their cause chain.
 *
 * Exposes the SDK's metrics in Prometheus text format on `metricsBind`: by default `TEMPORAL_METRICS_BIND` or
 * else a free loopback port, which `GET /metrics` (observability/metrics.ts) fetches and appends to the
 * service's own metrics. Pass `false` to export no SDK metrics.
 */
export function installTemporalRuntime(logger: Logger, metricsBind?: string | false): void {
  if (installed) return;
  installed = true;
  const sdkLog = logger.child({ component: 'temporal-sdk' });
  const runtimeLogger = new DefaultLogger(sdkLevel(logger.level), (entry: LogEntry) => {
    const { message, meta } = entry;
    const fields: Record<string, unknown> = { ...meta };
    const snapshotId = typeof fields.workflowId === 'string' ? snapshotIdOfWorkflow(fields.workflowId) : null;
    if (snapshotId && fields.snapshotId === undefined) fields.snapshotId = snapshotId;
    if (typeof fields.snapshotId === 'string' && fields.volumeId === undefined) {
      const volumeId = knownVolumes.get(fields.snapshotId);
      if (volumeId) fields.volumeId = volumeId;
    }
    // The SDK puts errors under `error` (from the workflow sandbox, not even `instanceof Error`): move them
    // under `err`, where the errWithCause serializer writes message, stack and cause chain.
    const error = fields.error as { message?: unknown } | undefined;
    if (fields.err === undefined && error && typeof error === 'object' && typeof error.message === 'string') {
      fields.err = error;
      delete fields.error;
    }
    // The backup worker has activities only, by design (app/workers.ts says so when the workers start): the
    // SDK's warning that it polls no workflow tasks is expected there, not a problem. Kept at debug.
    if (message === NO_WORKFLOWS_MESSAGE && fields.taskQueue !== undefined && activityOnlyQueues.has(String(fields.taskQueue))) {
      sdkLog.debug(fields, `${message} (an activity-only worker, as intended)`);
      return;
    }
    sdkLog[LEVELS[entry.level]](fields, message);
  });
  const logging = { filter: { core: 'WARN', other: 'ERROR' } as const, forward: {} };

  let bind: string | undefined;
  if (metricsBind !== false) {
    bind = metricsBind ?? process.env.TEMPORAL_METRICS_BIND;
    if (!bind) {
      const port = freeLoopbackPortSync();
      if (port) bind = `127.0.0.1:${port}`;
      else sdkLog.warn('no free loopback port for the Temporal SDK metrics exporter; SDK metrics are off');
    }
  }
  if (bind) {
    try {
      Runtime.install({
        logger: runtimeLogger,
        shutdownSignals: [],
        telemetryOptions: { logging, metrics: { prometheus: { bindAddress: bind } } },
      });
      const [host, port] = splitHostPort(bind);
      sdkMetricsUrl = `http://${host === '0.0.0.0' || host === '' ? '127.0.0.1' : host}:${port}/metrics`;
      return;
    } catch (err) {
      sdkLog.warn({ err, bind }, 'the Temporal SDK metrics exporter could not start; SDK metrics are off');
    }
  }
  // shutdownSignals: [] — app/process.ts owns SIGTERM/SIGINT and shuts down in order (workers, then stores).
  Runtime.install({ logger: runtimeLogger, shutdownSignals: [], telemetryOptions: { logging } });
}

function splitHostPort(bind: string): [string, string] {
  const i = bind.lastIndexOf(':');
  return [bind.slice(0, i).replace(/^\[|\]$/g, ''), bind.slice(i + 1)];
}

/** Where this process's Temporal SDK metrics can be scraped (Prometheus text), or null when they are off. */
export function temporalSdkMetricsUrl(): string | null {
  return sdkMetricsUrl;
}

/**
 * An activity interceptor that puts the activity's identity (workflowId, attempt, activity type, and for a
 * snapshot's activities snapshotId and volumeId) on every log line written while it runs, including lines
 * from the storage drivers, which know nothing about Temporal.
 */
export function activityLogContext(lookupVolumeId?: (snapshotId: string) => Promise<string | undefined>): ActivityInterceptorsFactory {
  return (ctx) => ({
    inbound: {
      async execute(input, next) {
        const { info } = ctx;
        const arg = input.args[0] as { snapshotId?: unknown; volumeId?: unknown } | undefined;
        const snapshotId = typeof arg?.snapshotId === 'string' ? arg.snapshotId : undefined;
        const fields: Record<string, unknown> = {
          workflowId: info.workflowExecution?.workflowId,
          activity: info.activityType,
          attempt: info.attempt,
        };
        if (snapshotId) {
          fields.snapshotId = snapshotId;
          // Given by the workflow (workflows/definitions.ts), else remembered, else read (older executions).
          const given = typeof arg?.volumeId === 'string' ? arg.volumeId : undefined;
          const volumeId = given ?? knownVolumes.get(snapshotId) ?? (await lookupVolumeId?.(snapshotId).catch(() => undefined));
          if (volumeId) {
            fields.volumeId = volumeId;
            rememberVolume(snapshotId, volumeId);
          }
        }
        return withLogContext(fields, () => next(input));
      },
    },
  });
}
