import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import { claimStaleAsyncJobs, finishAsyncJob, heartbeatAsyncJobs, insertAsyncJob, setAsyncJobInstance, type AsyncJobRecord } from '../../db/async-jobs.js';
import type { Pool } from '../../db/pool.js';
import type { Caller } from '../caller.js';
import { ApiErrorCode, CloudStackError, CsErrorCode, toCloudStackError } from './errors.js';

/*
 * CloudStack's async jobs, durable in PostgreSQL (`async_jobs`). A job runs in-process on the API replica that
 * accepted it, which touches the row's heartbeat while it runs. A job whose heartbeat goes stale (its replica
 * crashed, was killed or restarted) is claimed by a sweep that runs at start-up and every `sweepMs` on every
 * replica: re-driven if its command is safe to repeat (createSnapshot: the same idempotency key, so the same
 * snapshot), else failed with an error saying so. The snapshot's own workflow is durable in Temporal anyway.
 */

export interface JobContext {
  jobId: string;
  /** A create's new id, as soon as it is known: the request answers `{id, jobid}` then. */
  reportId(id: string): void;
}

/** What a job produced: `jobresult` (e.g. `{snapshot: {...}}`) and the instance it acted on. */
export interface JobOutcome {
  result: Record<string, unknown>;
  instanceId?: string;
}

export interface JobSubmission {
  caller: Caller;
  command: string;
  cmd: string;
  params: Record<string, string>;
  instanceType: string | null;
  instanceId: string | null;
  run(ctx: JobContext): Promise<JobOutcome>;
}

/** How to run a stored job again after its replica went away; undefined when its command is not safe to repeat. */
export type Redriver = (job: AsyncJobRecord, caller: Caller) => ((ctx: JobContext) => Promise<JobOutcome>) | undefined;

export interface JobRunnerOptions {
  pool: Pool;
  logger: Logger;
  redriver: Redriver;
  /** Role of an account, for re-driven jobs. */
  roleOf(accountId: string): Promise<Caller['role'] | undefined>;
  heartbeatMs?: number;
  staleSeconds?: number;
  sweepMs?: number;
  /** This replica's name in `async_jobs.owner` (default: host, pid and a random suffix). */
  owner?: string;
}

export function createJobRunner(opts: JobRunnerOptions) {
  const { pool, logger } = opts;
  const owner = opts.owner ?? `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
  const staleSeconds = opts.staleSeconds ?? 30;
  const running = new Set<string>();
  const log = logger.child({ component: 'cloudstack-jobs', owner });
  const quiet = (what: string) => (err: unknown) => {
    if (!pool.ending) log.warn({ err }, what);
  };

  /** Runs a job to its end and records the outcome; never throws. */
  async function drive(job: { id: string; command: string; instanceType: string | null }, run: (ctx: JobContext) => Promise<JobOutcome>, onId: (id: string) => void): Promise<void> {
    running.add(job.id);
    const ctx: JobContext = {
      jobId: job.id,
      reportId: (id) => {
        onId(id);
        if (job.instanceType) void setAsyncJobInstance(pool, job.id, job.instanceType, id).catch(quiet('recording a job instance failed'));
      },
    };
    try {
      const outcome = await run(ctx);
      if (outcome.instanceId) onId(outcome.instanceId);
      const done = await finishAsyncJob(pool, job.id, owner, { status: 1, resultCode: 0, result: outcome.result, instanceId: outcome.instanceId ?? null });
      if (!done) log.warn({ jobId: job.id }, 'job finished after another replica had claimed it; its outcome was not recorded');
      log.info({ jobId: job.id, command: job.command, instanceId: outcome.instanceId }, 'CloudStack job done');
    } catch (err) {
      const { error, unexpected } = toCloudStackError(err);
      if (unexpected) log.error({ err, jobId: job.id, command: job.command }, 'CloudStack job failed unexpectedly');
      else log.info({ jobId: job.id, command: job.command, errorcode: error.errorCode, errortext: error.message }, 'CloudStack job failed');
      await finishAsyncJob(pool, job.id, owner, { status: 2, resultCode: error.errorCode, result: error.toBody() }).catch(quiet('recording a failed job failed'));
    } finally {
      running.delete(job.id);
    }
  }

  async function reconcile(): Promise<{ redriven: string[]; failed: string[] }> {
    const claimed = await claimStaleAsyncJobs(pool, owner, staleSeconds);
    const redriven: string[] = [];
    const failed: string[] = [];
    for (const job of claimed) {
      const role = await opts.roleOf(job.accountId);
      const run = role ? opts.redriver(job, { accountId: job.accountId, role }) : undefined;
      if (run) {
        log.warn({ jobId: job.id, command: job.command, drives: job.drives }, 'a job whose API server went away is re-driven here');
        redriven.push(job.id);
        void drive(job, run, () => undefined);
        continue;
      }
      const what = job.instanceId ? ` Check ${job.instanceType} ${job.instanceId}` : ' Check the resources it named';
      const error = new CloudStackError(
        ApiErrorCode.INTERNAL_ERROR,
        CsErrorCode.CloudRuntimeException,
        `job ${job.id} (${job.command}) was interrupted: the API server running it stopped before it finished, and ${job.command} is not retried on its own.${what} and run it again if needed.`,
        job.instanceId ? [{ uuid: job.instanceId, description: `${job.instanceType ?? 'instance'}Id` }] : [],
      );
      log.warn({ jobId: job.id, command: job.command }, 'a job whose API server went away was failed');
      await finishAsyncJob(pool, job.id, owner, { status: 2, resultCode: error.errorCode, result: error.toBody() });
      failed.push(job.id);
    }
    return { redriven, failed };
  }

  const heartbeat = setInterval(() => {
    if (running.size) void heartbeatAsyncJobs(pool, owner).catch(quiet('job heartbeat failed'));
  }, opts.heartbeatMs ?? 5_000);
  heartbeat.unref();
  const sweep = setInterval(() => void reconcile().catch(quiet('reconciling interrupted jobs failed')), opts.sweepMs ?? 15_000);
  sweep.unref();
  // At start-up: jobs a previous run of this or another replica left pending.
  const startup = reconcile().then(
    (r) => {
      if (r.redriven.length || r.failed.length) log.warn(r, 'CloudStack jobs left pending by a stopped API server were reconciled');
      return r;
    },
    (err: unknown) => {
      quiet('reconciling interrupted jobs at start-up failed')(err);
      return { redriven: [] as string[], failed: [] as string[] };
    },
  );

  return {
    owner,
    /** The start-up reconciliation: which pending jobs of stopped replicas were re-driven and which failed. */
    startup,

    /**
     * Records the job (pending), runs it in the background and answers once its id is known: at once, or for a
     * create when the new resource's id is (or the job ended without one).
     */
    async submit(s: JobSubmission, waitForId: boolean): Promise<{ jobId: string; id?: string }> {
      const job = await insertAsyncJob(pool, {
        id: randomUUID(),
        accountId: s.caller.accountId,
        command: s.command,
        cmd: s.cmd,
        params: s.params,
        instanceType: s.instanceType,
        instanceId: s.instanceId,
        owner,
      });
      let settle: (id?: string) => void = () => undefined;
      const known = new Promise<string | undefined>((resolve) => (settle = resolve));
      const finished = drive(job, s.run, (id) => settle(id)).then(() => settle(undefined));
      if (!waitForId) return { jobId: job.id };
      void finished;
      const id = await known;
      return id ? { jobId: job.id, id } : { jobId: job.id };
    },

    reconcile,

    close() {
      clearInterval(heartbeat);
      clearInterval(sweep);
    },
  };
}

export type JobRunner = ReturnType<typeof createJobRunner>;
