import { randomUUID } from 'node:crypto';
import { Context } from '@temporalio/activity';
import { WorkflowFailedError, WorkflowUpdateFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import type { SnapshotActivities } from '../../activities/snapshot-activities.js';
import { temporalTestServer } from '../../temporal/binaries.js';
import { ensureSearchAttributes } from '../../temporal/search-attributes.js';
import { workflowBundle } from '../../app/workers.js';
import {
  mayRunQuery,
  snapshotCreatedUpdate,
  snapshotWorkflowId,
  statusQuery,
  type SnapshotWorkflowInput,
} from '../../workflows/definitions.js';
import type { snapshotWorkflow } from '../../workflows/snapshot-workflow.js';

const TASK_QUEUE = 'wf-test';
const BACKUP_QUEUE = 'wf-test-backup';

let env: TestWorkflowEnvironment;

beforeAll(async () => {
  env = await TestWorkflowEnvironment.createTimeSkipping({ server: { executable: temporalTestServer() as never } });
  await ensureSearchAttributes(env.connection, env.namespace ?? 'default');
});
afterAll(async () => {
  await env?.teardown();
});

/** Records what the mocked activities were asked to do, and when (the test server's clock, which skips). */
interface Calls {
  order: string[];
  backupAttempts: { attempt: number; scheduledAtMs: number }[];
  errors: string[];
}

/** The backup attempt: counted by the workflow (its input), or by Temporal for executions before that. */
const attemptOf = (req: { attempt?: number } | undefined): number => req?.attempt ?? Context.current().info.attempt;

/** A failure of the copy itself, as the real activity reports it: it counts toward backup.max.attempts. */
const copyFailed = (message: string) => ApplicationFailure.nonRetryable(message, 'BackupCopyFailed');

type Mock = Partial<Record<keyof SnapshotActivities, (input: any) => Promise<any>>>;

function mockActivities(calls: Calls, overrides: Mock = {}): SnapshotActivities {
  const base: SnapshotActivities = {
    async createSnapshotOnPrimary() {
      calls.order.push('createSnapshotOnPrimary');
      return { sizeBytes: 1024 };
    },
    async backupSnapshotToSecondary(req: { attempt?: number }) {
      calls.order.push('backupSnapshotToSecondary');
      calls.backupAttempts.push({ attempt: attemptOf(req), scheduledAtMs: await env.currentTimeMs() });
      return { installPath: 'snapshots/a/v/s.qcow2', sizeBytes: 1024, checksum: 'sha256:00' };
    },
    async deletePrimarySnapshot() {
      calls.order.push('deletePrimarySnapshot');
      return { deleted: true };
    },
    async markSnapshotError({ reason }: { reason: string }) {
      calls.order.push('markSnapshotError');
      calls.errors.push(reason);
      return { changed: true, state: 'Error' };
    },
  };
  const wrapped = { ...base } as Record<string, unknown>;
  for (const [name, fn] of Object.entries(overrides)) {
    wrapped[name] = async (input: unknown) => {
      if (name === 'backupSnapshotToSecondary') {
        calls.order.push(name);
        calls.backupAttempts.push({ attempt: attemptOf(input as { attempt?: number }), scheduledAtMs: await env.currentTimeMs() });
      } else {
        calls.order.push(name);
      }
      return fn!(input);
    };
  }
  return wrapped as SnapshotActivities;
}

function input(overrides: Partial<SnapshotWorkflowInput> = {}): SnapshotWorkflowInput {
  return {
    snapshotId: randomUUID(),
    volumeId: randomUUID(),
    vmId: randomUUID(),
    accountId: randomUUID(),
    volumeType: 'ROOT',
    asyncBackup: true,
    backup: { maxAttempts: 3, retryIntervalSeconds: 300 },
    backupTaskQueue: BACKUP_QUEUE,
    ...overrides,
  };
}

/** Runs `body` with both workers (main and backup queue) serving the given mocks. */
async function withWorkers<T>(activities: SnapshotActivities, body: () => Promise<T>): Promise<T> {
  const { backupSnapshotToSecondary, ...rest } = activities;
  const main = await Worker.create({
    connection: env.nativeConnection,
    taskQueue: TASK_QUEUE,
    workflowBundle: await workflowBundle(),
    activities: rest,
  });
  const backup = await Worker.create({
    connection: env.nativeConnection,
    taskQueue: BACKUP_QUEUE,
    activities: { backupSnapshotToSecondary },
  });
  return main.runUntil(backup.runUntil(body()));
}

/**
 * Starts the workflow and sends the "created" update. The time-skipping test server does not implement
 * ExecuteMultiOperation (Update-with-Start), so start and update go separately here; the integration tier
 * covers Update-with-Start itself on the dev server.
 */
async function startAndAwaitCreated(wfInput: SnapshotWorkflowInput) {
  const handle = await env.client.workflow.start<typeof snapshotWorkflow>('snapshotWorkflow', {
    workflowId: snapshotWorkflowId(wfInput.snapshotId),
    taskQueue: TASK_QUEUE,
    args: [wfInput],
  });
  const created = handle.executeUpdate(snapshotCreatedUpdate);
  return { handle, created };
}

describe('snapshot workflow (time-skipping server, mocked activities)', () => {
  it('returns "created" to the caller before the backup finishes, then ends BackedUp', async () => {
    const calls: Calls = { order: [], backupAttempts: [], errors: [] };
    let releaseBackup!: () => void;
    const backupGate = new Promise<void>((r) => (releaseBackup = r));
    let backupStarted!: () => void;
    const backupRunning = new Promise<void>((r) => (backupStarted = r));
    const acts = mockActivities(calls, {
      backupSnapshotToSecondary: async () => {
        backupStarted();
        await backupGate;
        return { installPath: 'snapshots/a/v/s.qcow2', sizeBytes: 1024, checksum: 'sha256:00' };
      },
    });
    const wfInput = input();
    // Whatever happens, let the held activity finish so the workers can shut down.
    onTestFinished(() => releaseBackup());
    await withWorkers(acts, async () => {
      const { handle, created: createdP } = await startAndAwaitCreated(wfInput);
      const created = await createdP;
      expect(created.snapshotId).toBe(wfInput.snapshotId);
      // The update resolves in the activation that follows primary creation, by which time the workflow has
      // already scheduled the backup: either state is the "created" milestone.
      expect(['CreatedOnPrimary', 'BackingUp']).toContain(created.state);
      // The caller already has its answer while the backup has not finished (it is held by the gate).
      await backupRunning;
      expect(calls.order).toEqual(['createSnapshotOnPrimary', 'backupSnapshotToSecondary']);
      expect((await handle.query(statusQuery)).state).toBe('BackingUp');
      releaseBackup();
      const result = await handle.result();
      expect(result.state).toBe('BackedUp');
      expect(result.checksum).toBe('sha256:00');
    });
    expect(calls.order).not.toContain('deletePrimarySnapshot');
  });

  it('with the default configuration makes exactly 3 attempts 300 s apart, then deletes the primary snapshot and fails', async () => {
    const calls: Calls = { order: [], backupAttempts: [], errors: [] };
    const acts = mockActivities(calls, {
      backupSnapshotToSecondary: async () => {
        throw copyFailed('image store unreachable');
      },
    });
    const wfInput = input();
    await withWorkers(acts, async () => {
      const { handle, created } = await startAndAwaitCreated(wfInput);
      await created;
      const err = await handle.result().then(() => null, (e) => e);
      expect(err).toBeInstanceOf(WorkflowFailedError);
      expect((err as WorkflowFailedError).cause).toBeInstanceOf(ApplicationFailure);
      expect(((err as WorkflowFailedError).cause as ApplicationFailure).type).toBe('BackupFailed');
    });
    expect(calls.backupAttempts.map((a) => a.attempt)).toEqual([1, 2, 3]);
    const [a1, a2, a3] = calls.backupAttempts.map((a) => a.scheduledAtMs);
    // Fixed interval (backoff coefficient 1): each retry is scheduled 300 s after the previous attempt failed.
    expect((a2! - a1!) / 1000).toBeGreaterThanOrEqual(300);
    expect((a2! - a1!) / 1000).toBeLessThan(310);
    expect((a3! - a2!) / 1000).toBeGreaterThanOrEqual(300);
    expect((a3! - a2!) / 1000).toBeLessThan(310);
    // Compensation after the last attempt: primary snapshot deleted, then the snapshot goes to Error.
    expect(calls.order).toEqual([
      'createSnapshotOnPrimary',
      'backupSnapshotToSecondary',
      'backupSnapshotToSecondary',
      'backupSnapshotToSecondary',
      'deletePrimarySnapshot',
      'markSnapshotError',
    ]);
    expect(calls.errors[0]).toContain('image store unreachable');
  });

  it('takes its retry policy from the input: 2 attempts 10 s apart', async () => {
    const calls: Calls = { order: [], backupAttempts: [], errors: [] };
    const acts = mockActivities(calls, {
      backupSnapshotToSecondary: async () => {
        throw ApplicationFailure.create({
          message: 'backup to /store failed: image store /store is unusable: ENOSPC: no space left on device',
          type: 'BackupCopyFailed',
          nonRetryable: true,
          cause: new Error('ENOSPC: no space left on device'),
        });
      },
    });
    await withWorkers(acts, async () => {
      const { handle, created } = await startAndAwaitCreated(input({ backup: { maxAttempts: 2, retryIntervalSeconds: 10 } }));
      await created;
      await handle.result().catch(() => undefined);
    });
    // The recorded reason is the activity's message with its context, not only the innermost cause.
    expect(calls.errors).toEqual(['backup to /store failed: image store /store is unusable: ENOSPC: no space left on device']);
    expect(calls.backupAttempts.map((a) => a.attempt)).toEqual([1, 2]);
    const gap = (calls.backupAttempts[1]!.scheduledAtMs - calls.backupAttempts[0]!.scheduledAtMs) / 1000;
    expect(gap).toBeGreaterThanOrEqual(10);
    expect(gap).toBeLessThan(20);
    expect(calls.order.slice(-2)).toEqual(['deletePrimarySnapshot', 'markSnapshotError']);
  });

  it('ends BackedUp when a later attempt succeeds, without compensation', async () => {
    const calls: Calls = { order: [], backupAttempts: [], errors: [] };
    const acts = mockActivities(calls, {
      backupSnapshotToSecondary: async (req: { attempt?: number }) => {
        if (attemptOf(req) < 2) throw copyFailed('transient copy failure');
        return { installPath: 'snapshots/a/v/s.qcow2', sizeBytes: 2048, checksum: 'sha256:11' };
      },
    });
    await withWorkers(acts, async () => {
      const { handle, created } = await startAndAwaitCreated(input());
      await created;
      const result = await handle.result();
      expect(result).toMatchObject({ state: 'BackedUp', sizeBytes: 2048 });
    });
    expect(calls.backupAttempts.map((a) => a.attempt)).toEqual([1, 2]);
    expect(calls.order).not.toContain('deletePrimarySnapshot');
    expect(calls.order).not.toContain('markSnapshotError');
  });

  it('reports a failure on primary to the caller, moves to Error and never attempts a backup', async () => {
    const calls: Calls = { order: [], backupAttempts: [], errors: [] };
    const acts = mockActivities(calls, {
      createSnapshotOnPrimary: async () => {
        throw ApplicationFailure.nonRetryable('qemu-img: Could not open volume', 'PrimarySnapshotFailed');
      },
    });
    const wfInput = input();
    await withWorkers(acts, async () => {
      const { handle, created } = await startAndAwaitCreated(wfInput);
      const err = await created.then(() => null, (e) => e);
      expect(err).toBeInstanceOf(WorkflowUpdateFailedError);
      expect(String((err as Error).cause)).toContain('Could not open volume');
      const result = await handle.result().then(() => null, (e) => e);
      expect(result).toBeInstanceOf(WorkflowFailedError);
    });
    expect(calls.order).toEqual(['createSnapshotOnPrimary', 'markSnapshotError']);
    expect(calls.backupAttempts).toHaveLength(0);
  });

  it('answers the policy query while the backup runs, from the same table as the API', async () => {
    const calls: Calls = { order: [], backupAttempts: [], errors: [] };
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let started!: () => void;
    const running = new Promise<void>((r) => (started = r));
    const acts = mockActivities(calls, {
      backupSnapshotToSecondary: async () => {
        started();
        await gate;
        return { installPath: 'x', sizeBytes: 1, checksum: 'sha256:22' };
      },
    });
    const wfInput = input({ volumeType: 'ROOT' });
    onTestFinished(() => release());
    await withWorkers(acts, async () => {
      const { handle, created } = await startAndAwaitCreated(wfInput);
      await created;
      await running;
            const vm = wfInput.vmId!;
      expect(await handle.query(mayRunQuery, { kind: 'vm', action: 'start', vmId: vm })).toEqual({ allowed: true });
      const destroy = await handle.query(mayRunQuery, { kind: 'vm', action: 'destroy', vmId: vm });
      expect(destroy).toMatchObject({ allowed: false, snapshotId: wfInput.snapshotId, volumeId: wfInput.volumeId });
      const detach = await handle.query(mayRunQuery, { kind: 'vm', action: 'detach-volume', vmId: vm, volumeId: wfInput.volumeId });
      expect(detach.allowed).toBe(false);
      const status = await handle.query(statusQuery);
      expect(status.vmActions?.reboot).toEqual({ allowed: true });
      expect(status.vmActions?.migrate.allowed).toBe(false);
      release();
      await handle.result();
    });
  });

  it('compensates when cancelled during the backup', async () => {
    const calls: Calls = { order: [], backupAttempts: [], errors: [] };
    let started!: () => void;
    const running = new Promise<void>((r) => (started = r));
    const acts = mockActivities(calls, {
      backupSnapshotToSecondary: async () => {
        started();
        const ctx = Context.current();
        // Heartbeat until the cancellation reaches the activity.
        for (;;) {
          ctx.heartbeat();
          await ctx.sleep(100);
        }
      },
    });
    await withWorkers(acts, async () => {
      const { handle, created } = await startAndAwaitCreated(input());
      await created;
      await running;
            await handle.cancel();
      await expect(handle.result()).rejects.toBeInstanceOf(WorkflowFailedError);
    });
    expect(calls.order.slice(-2)).toEqual(['deletePrimarySnapshot', 'markSnapshotError']);
    expect(calls.errors).toEqual(['backup cancelled']);
  });

  it('an interrupted attempt (worker stopping) is resumed at once and costs no attempt', async () => {
    const calls: Calls = { order: [], backupAttempts: [], errors: [] };
    let executions = 0;
    const acts = mockActivities(calls, {
      backupSnapshotToSecondary: async () => {
        executions++;
        if (executions <= 2) throw ApplicationFailure.retryable('attempt 1 of 1 interrupted (its worker is stopping); resuming', 'BackupInterrupted');
        return { installPath: 'snapshots/a/v/s.qcow2', sizeBytes: 4096, checksum: 'sha256:33' };
      },
    });
    await withWorkers(acts, async () => {
      // One attempt only: before the attempt loop, each interruption burnt it and the snapshot failed.
      const { handle, created } = await startAndAwaitCreated(input({ backup: { maxAttempts: 1, retryIntervalSeconds: 300 } }));
      await created;
      expect(await handle.result()).toMatchObject({ state: 'BackedUp', sizeBytes: 4096 });
    });
    expect(calls.backupAttempts.map((a) => a.attempt)).toEqual([1, 1, 1]);
    // Resumed within seconds, not after backup.retry.interval.
    const last = calls.backupAttempts.at(-1)!.scheduledAtMs - calls.backupAttempts[0]!.scheduledAtMs;
    expect(last / 1000).toBeLessThan(30);
    expect(calls.order).not.toContain('deletePrimarySnapshot');
  });

  it('a backup step refused by the state machine is final at once: no further attempts', async () => {
    const calls: Calls = { order: [], backupAttempts: [], errors: [] };
    const acts = mockActivities(calls, {
      backupSnapshotToSecondary: async () => {
        throw ApplicationFailure.nonRetryable('snapshot s is Error; it is not backed up', 'IllegalSnapshotTransitionError');
      },
    });
    await withWorkers(acts, async () => {
      const { handle, created } = await startAndAwaitCreated(input());
      await created;
      await expect(handle.result()).rejects.toBeInstanceOf(WorkflowFailedError);
    });
    expect(calls.backupAttempts).toHaveLength(1);
    expect(calls.order.slice(-2)).toEqual(['deletePrimarySnapshot', 'markSnapshotError']);
  });

  it('when the compensation finds the snapshot backed up it keeps it: no Error, nothing deleted', async () => {
    const calls: Calls = { order: [], backupAttempts: [], errors: [] };
    const acts = mockActivities(calls, {
      backupSnapshotToSecondary: async () => {
        throw copyFailed('copy failed');
      },
      deletePrimarySnapshot: async () => ({ deleted: false, reason: 'it is BackedUp' }),
    });
    await withWorkers(acts, async () => {
      const { handle, created } = await startAndAwaitCreated(input({ backup: { maxAttempts: 1, retryIntervalSeconds: 5 } }));
      await created;
      const err = await handle.result().then(() => null, (e) => e);
      expect(String((err as WorkflowFailedError).cause?.message)).toContain('kept');
    });
    expect(calls.order).not.toContain('markSnapshotError');
  });

  it("takes a running VM's primary snapshot on its host's queue (not the main one), and its history replays", async () => {
    const calls: Calls = { order: [], backupAttempts: [], errors: [] };
    const hostQueue = `${TASK_QUEUE}-host-kvm-host-1`;
    const { createSnapshotOnPrimary: _onMain, ...rest } = mockActivities(calls);
    const onHost: string[] = [];
    const mainOnly = { ...rest, createSnapshotOnPrimary: async () => Promise.reject(new Error('the main queue must not take it')) };
    const wfInput = input({ primaryHost: { name: 'kvm-host-1', taskQueue: hostQueue, timeoutSeconds: 5 } });
    const host = await Worker.create({
      connection: env.nativeConnection,
      taskQueue: hostQueue,
      activities: {
        createSnapshotOnPrimary: async (i: { snapshotId: string }) => {
          onHost.push(i.snapshotId);
          return { sizeBytes: 1024 };
        },
      },
    });
    const handle = await host.runUntil(
      withWorkers(mainOnly as SnapshotActivities, async () => {
        const { handle, created } = await startAndAwaitCreated(wfInput);
        await created;
        await handle.result();
        return handle;
      }),
    );
    expect(onHost).toEqual([wfInput.snapshotId]);
    expect(calls.order).toEqual(['backupSnapshotToSecondary']);
    // Deterministic: the recorded history replays against this code.
    await Worker.runReplayHistory({ workflowBundle: await workflowBundle() }, await handle.fetchHistory(), wfInput.snapshotId);
  });

  it("compensates on the VM's host; with its host worker gone by then, on the main queue", async () => {
    const calls: Calls = { order: [], backupAttempts: [], errors: [] };
    const hostQueue = `${TASK_QUEUE}-host-kvm-host-3`;
    const acts = mockActivities(calls, { backupSnapshotToSecondary: async () => Promise.reject(copyFailed('store unusable')) });
    const onHost: string[] = [];
    const wfInput = input({ backup: { maxAttempts: 1, retryIntervalSeconds: 1 }, primaryHost: { name: 'kvm-host-3', taskQueue: hostQueue, timeoutSeconds: 2 } });
    // The host worker takes the creation, then stops before the backup fails.
    const host = await Worker.create({
      connection: env.nativeConnection,
      taskQueue: hostQueue,
      activities: {
        createSnapshotOnPrimary: async () => {
          onHost.push('createSnapshotOnPrimary');
          return { sizeBytes: 1024 };
        },
        deletePrimarySnapshot: async () => {
          onHost.push('deletePrimarySnapshot');
          return { deleted: true };
        },
      },
    });
    const { createSnapshotOnPrimary: _c, ...mainOnly } = acts;
    await withWorkers(mainOnly as SnapshotActivities, async () => {
      const { handle, created } = await host.runUntil(async () => {
        const started = await startAndAwaitCreated(wfInput);
        await started.created;
        return started;
      });
      await created;
      await expect(handle.result()).rejects.toBeInstanceOf(WorkflowFailedError);
    });
    expect(onHost).toEqual(['createSnapshotOnPrimary']);
    expect(calls.order).toEqual(['backupSnapshotToSecondary', 'deletePrimarySnapshot', 'markSnapshotError']);
  });

  it("with no worker on the VM's host queue, fails creation with a clear reason and backs nothing up", async () => {
    const calls: Calls = { order: [], backupAttempts: [], errors: [] };
    const wfInput = input({ primaryHost: { name: 'kvm-host-9', taskQueue: `${TASK_QUEUE}-host-kvm-host-9`, timeoutSeconds: 2 } });
    await withWorkers(mockActivities(calls), async () => {
      const { handle, created } = await startAndAwaitCreated(wfInput);
      // Schedule-to-start is timed on the real clock by the test server: keep the bound short.
      await expect(created).rejects.toBeInstanceOf(WorkflowUpdateFailedError);
      await expect(handle.result()).rejects.toBeInstanceOf(WorkflowFailedError);
    });
    expect(calls.order).toEqual(['markSnapshotError']);
    expect(calls.errors[0]).toContain('host kvm-host-9 did not take the snapshot within 2 s');
  });

  it('with no backup worker, fails after backup.queue.timeout with a clear reason', async () => {
    const calls: Calls = { order: [], backupAttempts: [], errors: [] };
    const { backupSnapshotToSecondary: _unused, ...mainOnly } = mockActivities(calls);
    const main = await Worker.create({
      connection: env.nativeConnection,
      taskQueue: TASK_QUEUE,
      workflowBundle: await workflowBundle(),
      activities: mainOnly,
    });
    await main.runUntil(async () => {
      const { handle, created } = await startAndAwaitCreated(
        input({ backupTaskQueue: `${BACKUP_QUEUE}-nobody`, backup: { maxAttempts: 3, retryIntervalSeconds: 300, queueTimeoutSeconds: 10 } }),
      );
      await created;
      // The time-skipping server times a schedule-to-start bound on the real clock: keep the bound short.
      await expect(handle.result()).rejects.toBeInstanceOf(WorkflowFailedError);
    });
    expect(calls.order).toEqual(['createSnapshotOnPrimary', 'deletePrimarySnapshot', 'markSnapshotError']);
    expect(calls.errors[0]).toContain('backup.queue.timeout');
  });
});
