/**
 * VM steps as activities (docs/design.md §15): `runVmStep` on the VM's host queue (the host worker, which
 * reaches that host's libvirt), `abandonVmStep` on the main queue (the database only) when no host took a step.
 */
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { Pool } from '../db/pool.js';
import { ConflictError, NotFoundError, ServiceUnavailableError } from '../domain/errors.js';
import { abandonVmStep, type HostStep, type VmStepRunner } from '../services/vm-steps.js';

export interface VmStepActivityInput {
  vmId: string;
  step: HostStep;
}

/** Heartbeats while a step runs: a host worker that dies mid-step is noticed in the heartbeat timeout. */
const HEARTBEAT_MS = 5_000;

/** An error the API answers with its code: carried across Temporal as an ApplicationFailure of that type. */
function toFailure(err: unknown): unknown {
  if (err instanceof ConflictError || err instanceof ServiceUnavailableError) {
    return ApplicationFailure.create({ message: err.message, type: err.code, nonRetryable: true, details: [err.details] });
  }
  if (err instanceof NotFoundError) return ApplicationFailure.create({ message: err.message, type: err.code, nonRetryable: true });
  return err;
}

export function createHostActivities(runner: VmStepRunner) {
  return {
    async runVmStep(input: VmStepActivityInput): Promise<void> {
      const beat = setInterval(() => Context.current().heartbeat(), HEARTBEAT_MS);
      try {
        await runner.run(input.vmId, input.step);
      } catch (err) {
        throw toFailure(err);
      } finally {
        clearInterval(beat);
      }
    },
  };
}

export function createVmStepActivities(pool: Pool) {
  return {
    async abandonVmStep(input: VmStepActivityInput & { reason: string }): Promise<void> {
      await abandonVmStep(pool, input.vmId, input.step, input.reason);
    },
  };
}

export type HostActivities = ReturnType<typeof createHostActivities>;
export type VmStepActivities = ReturnType<typeof createVmStepActivities>;
