import { ActivityFailure, ApplicationFailure, TimeoutFailure, proxyActivities, setCurrentDetails } from '@temporalio/workflow';
import type { HostActivities, VmStepActivities } from '../activities/vm-step-activities.js';
import type { HostStep } from '../services/vm-steps.js';
import { VM_STEP_FAILURE_TYPES, type VmStepWorkflowInput } from './definitions.js';

/**
 * One VM action's hypervisor step (docs/design.md §15): its first phase is committed by the API; here the step
 * runs on the VM's host queue, where the host's worker calls libvirt and commits the result. The API waits for
 * this workflow, but an API that dies meanwhile changes nothing: the step and its commit go on here. A step no
 * host worker takes in time never ran, so its first phase is undone (HYPERVISOR_UNAVAILABLE). Never retried: a
 * hot-plug or reboot run twice is not the same as once; a step whose host died midway is settled by the power
 * sync from libvirt's truth.
 */
export async function vmStepWorkflow(input: VmStepWorkflowInput): Promise<void> {
  const step = input.step as unknown as HostStep;
  const host = proxyActivities<HostActivities>({
    taskQueue: input.hostTaskQueue,
    scheduleToStartTimeout: `${input.hostTimeoutSeconds} seconds`,
    // A stop waits for its guest (VM_STOP_TIMEOUT_SECONDS, at most an hour) and then powers off.
    startToCloseTimeout: '70 minutes',
    heartbeatTimeout: '30 seconds',
    retry: { maximumAttempts: 1 },
    summary: `${step.kind} on host ${input.hostName}`,
  });
  const main = proxyActivities<VmStepActivities>({ startToCloseTimeout: '1 minute', retry: { maximumAttempts: 10 } });
  setCurrentDetails(`**${step.kind}** of VM ${input.vmId} on host ${input.hostName}`);
  try {
    await host.runVmStep({ vmId: input.vmId, step });
  } catch (err) {
    const cause = err instanceof ActivityFailure ? err.cause : err;
    if (cause instanceof TimeoutFailure && cause.timeoutType === 'SCHEDULE_TO_START') {
      const reason = `host ${input.hostName} did not take the step within ${input.hostTimeoutSeconds} s: its host worker is not running`;
      await main.abandonVmStep({ vmId: input.vmId, step, reason });
      throw ApplicationFailure.nonRetryable(reason, VM_STEP_FAILURE_TYPES.unavailable, { vmId: input.vmId, host: input.hostName });
    }
    if (cause instanceof TimeoutFailure) {
      // It may have run: the power sync on that host settles the VM from libvirt once its worker is back.
      throw ApplicationFailure.nonRetryable(
        `host ${input.hostName} stopped answering during the step; the VM is settled from its hypervisor when the host is back`,
        VM_STEP_FAILURE_TYPES.unavailable,
        { vmId: input.vmId, host: input.hostName },
      );
    }
    if (cause instanceof ApplicationFailure) {
      throw ApplicationFailure.create({
        message: cause.message,
        type: cause.type ?? VM_STEP_FAILURE_TYPES.hypervisor,
        nonRetryable: true,
        details: cause.details as unknown[] | undefined,
      });
    }
    throw ApplicationFailure.nonRetryable(cause instanceof Error ? cause.message : String(cause), VM_STEP_FAILURE_TYPES.hypervisor, { vmId: input.vmId });
  }
}
