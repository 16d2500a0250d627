/**
 * Where a VM action's hypervisor step runs (docs/design.md §15): as a vmStepWorkflow whose step runs on the VM's
 * host queue, served by that host's worker, which calls libvirt and commits the result; the API waits for it.
 */
import { randomUUID } from 'node:crypto';
import { WorkflowFailedError, type Client } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { hostTaskQueue } from '../compute/host-queue.js';
import { ConflictError, ERROR_CODES, ServiceUnavailableError, type ErrorCode } from '../domain/errors.js';
import type { vmStepWorkflow } from '../workflows/vm-step-workflow.js';
import { VM_STEP_FAILURE_TYPES, vmStepWorkflowId } from '../workflows/definitions.js';
import type { Pool } from '../db/pool.js';
import { abandonVmStep, type HostStep } from './vm-steps.js';

export interface VmHostRef {
  name: string;
  /** The host's libvirt URI, set by its host worker when it connects; null: never connected. */
  uri: string | null;
}

export interface VmStepDispatcher {
  /** Refuses (HYPERVISOR_UNAVAILABLE) before any first phase when the host cannot run VMs at all. */
  check(host: VmHostRef): void;
  /** Runs the step on the VM's host and resolves once its result is committed; throws what the step threw. */
  run(vmId: string, host: VmHostRef, step: HostStep): Promise<void>;
}

const notConnected = (host: VmHostRef) =>
  new ServiceUnavailableError('HYPERVISOR_UNAVAILABLE', `host ${host.name} is not connected (no host worker has served it); no VM can run there`, { host: host.name }, 30);

/** Steps as workflows on the hosts' task queues. */
export function hostQueueVmSteps(opts: { client: Client; pool: Pool; taskQueue: string; hostTimeoutSeconds: number }): VmStepDispatcher {
  return {
    check(host) {
      if (!host.uri) throw notConnected(host);
    },
    async run(vmId, host, step) {
      const handle = await opts.client.workflow
        .start<typeof vmStepWorkflow>('vmStepWorkflow', {
          taskQueue: opts.taskQueue,
          workflowId: vmStepWorkflowId(vmId, randomUUID()),
          args: [{ vmId, hostName: host.name, hostTaskQueue: hostTaskQueue(opts.taskQueue, host.name), hostTimeoutSeconds: opts.hostTimeoutSeconds, step }],
        })
        .catch(async () => {
          // Most likely never started; if it did, its step finds the first phase undone and does nothing.
          await abandonVmStep(opts.pool, vmId, step, 'Temporal did not answer; nothing was done');
          throw new ServiceUnavailableError('TEMPORAL_UNAVAILABLE', 'Temporal did not answer; nothing was done, try again', { vmId });
        });
      try {
        await handle.result();
      } catch (err) {
        throw fromFailure(err, vmId, host);
      }
    },
  };
}

/** The step's failure as the API's error: its code and details, as the host worker raised them. */
function fromFailure(err: unknown, vmId: string, host: VmHostRef): unknown {
  if (!(err instanceof WorkflowFailedError)) {
    return new ServiceUnavailableError('TEMPORAL_UNAVAILABLE', 'Temporal did not answer while the VM action ran; it goes on, follow the VM\'s state', { vmId });
  }
  const cause = err.cause instanceof ApplicationFailure ? err.cause : undefined;
  const code = cause?.type ?? VM_STEP_FAILURE_TYPES.hypervisor;
  const details = (cause?.details?.[0] as Record<string, unknown> | undefined) ?? { vmId };
  const message = cause?.message ?? err.message;
  if (code === VM_STEP_FAILURE_TYPES.unavailable) return new ServiceUnavailableError('HYPERVISOR_UNAVAILABLE', message, { ...details, host: host.name }, 30);
  if (code in ERROR_CODES) return new ConflictError(code as ErrorCode, message, details);
  return new ConflictError('HYPERVISOR_ERROR', message, details);
}
