import { randomUUID } from 'node:crypto';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HostActivities, VmStepActivities, VmStepActivityInput } from '../../activities/vm-step-activities.js';
import { workflowBundle } from '../../app/workers.js';
import { hostTaskQueue } from '../../compute/host-queue.js';
import { temporalTestServer } from '../../temporal/binaries.js';
import { vmStepWorkflowId, type VmStepWorkflowInput } from '../../workflows/definitions.js';
import type { vmStepWorkflow } from '../../workflows/vm-step-workflow.js';

const TASK_QUEUE = 'vm-step-test';

let env: TestWorkflowEnvironment;

beforeAll(async () => {
  env = await TestWorkflowEnvironment.createTimeSkipping({ server: { executable: temporalTestServer() as never } });
});
afterAll(async () => {
  await env?.teardown();
});

interface Seen {
  hostCalls: VmStepActivityInput[];
  abandoned: Array<VmStepActivityInput & { reason: string }>;
}

/** Runs `body` with the main worker and, unless `hostDown`, a host worker for `host` doing `onHost`. */
async function withWorkers<T>(seen: Seen, host: string, onHost: (i: VmStepActivityInput) => Promise<void>, body: () => Promise<T>, hostDown = false): Promise<T> {
  const mainActivities: VmStepActivities = {
    async abandonVmStep(i) {
      seen.abandoned.push(i);
    },
  };
  const hostActivities: HostActivities = {
    async runVmStep(i) {
      seen.hostCalls.push(i);
      await onHost(i);
    },
  };
  const main = await Worker.create({ connection: env.nativeConnection, taskQueue: TASK_QUEUE, workflowBundle: await workflowBundle(), activities: mainActivities });
  if (hostDown) return main.runUntil(body());
  const hostWorker = await Worker.create({ connection: env.nativeConnection, taskQueue: hostTaskQueue(TASK_QUEUE, host), activities: hostActivities });
  return main.runUntil(hostWorker.runUntil(body()));
}

function start(vmId: string, host: string, step: VmStepWorkflowInput['step'], hostTimeoutSeconds = 5) {
  return env.client.workflow.start<typeof vmStepWorkflow>('vmStepWorkflow', {
    taskQueue: TASK_QUEUE,
    workflowId: vmStepWorkflowId(vmId, randomUUID()),
    args: [{ vmId, hostName: host, hostTaskQueue: hostTaskQueue(TASK_QUEUE, host), hostTimeoutSeconds, step }],
  });
}

async function failureOf(p: Promise<unknown>): Promise<ApplicationFailure> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(WorkflowFailedError);
  const cause = (err as WorkflowFailedError).cause;
  expect(cause).toBeInstanceOf(ApplicationFailure);
  return cause as ApplicationFailure;
}

describe('VM step workflow (time-skipping server, mocked activities)', () => {
  it("runs the step on the VM's host queue, nowhere else, and ends when the host has committed it", async () => {
    const seen: Seen = { hostCalls: [], abandoned: [] };
    const vmId = randomUUID();
    await withWorkers(seen, 'kvm-host-7', async () => undefined, async () => {
      await (await start(vmId, 'kvm-host-7', { kind: 'stop', forced: true })).result();
    });
    expect(seen.hostCalls).toEqual([{ vmId, step: { kind: 'stop', forced: true } }]);
    expect(seen.abandoned).toEqual([]);
  });

  it("fails with the host's error code, message and details when libvirt refused the step, and runs it once", async () => {
    const seen: Seen = { hostCalls: [], abandoned: [] };
    const vmId = randomUUID();
    const refuse = async () => {
      throw ApplicationFailure.create({ message: 'starting VM a failed: no memory', type: 'HYPERVISOR_ERROR', nonRetryable: false, details: [{ vmId, state: 'Stopped' }] });
    };
    const failure = await withWorkers(seen, 'kvm-host-7', refuse, async () => failureOf((await start(vmId, 'kvm-host-7', { kind: 'start' })).result()));
    expect(failure.type).toBe('HYPERVISOR_ERROR');
    expect(failure.message).toBe('starting VM a failed: no memory');
    expect(failure.details).toEqual([{ vmId, state: 'Stopped' }]);
    // Retryable as thrown, yet run once: a hot-plug or reboot run twice is not the same as once.
    expect(seen.hostCalls).toHaveLength(1);
    expect(seen.abandoned).toEqual([]);
  });

  it('with no worker on the host queue, undoes the first phase after the host timeout and fails HYPERVISOR_UNAVAILABLE', async () => {
    const seen: Seen = { hostCalls: [], abandoned: [] };
    const vmId = randomUUID();
    const step = { kind: 'attach', volume: { id: randomUUID(), name: 'd1', path: '/p/d1.qcow2' }, target: 'vdb' };
    // The time-skipping server times a schedule-to-start bound on the real clock: keep the bound short.
    const failure = await withWorkers(seen, 'kvm-host-9', async () => undefined, async () => failureOf((await start(vmId, 'kvm-host-9', step, 2)).result()), true);
    expect(failure.type).toBe('HYPERVISOR_UNAVAILABLE');
    expect(failure.message).toContain('host kvm-host-9 did not take the step within 2 s');
    expect(seen.hostCalls).toEqual([]);
    expect(seen.abandoned).toEqual([{ vmId, step, reason: failure.message }]);
  });
});
