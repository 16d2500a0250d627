import { defineSearchAttributeKey } from '@temporalio/common';
import { defineQuery, defineUpdate } from '@temporalio/workflow';
import type { BackupRetrySettings } from '../config/settings.js';
import type { Decision, Operation, VmAction, VolumeType } from '../domain/policy.js';
import type { SnapshotState } from '../domain/snapshot-states.js';

/** Search attributes that make a snapshot's workflow easy to find in the Temporal Web UI. */
export const SEARCH_ATTRIBUTES = {
  VolumeId: defineSearchAttributeKey('VolumeId', 'KEYWORD'),
  VmId: defineSearchAttributeKey('VmId', 'KEYWORD'),
  AccountId: defineSearchAttributeKey('AccountId', 'KEYWORD'),
  SnapshotState: defineSearchAttributeKey('SnapshotState', 'KEYWORD'),
} as const;

/** The workflow id of a snapshot's workflow. */
export const snapshotWorkflowId = (snapshotId: string): string => `snapshot-${snapshotId}`;

const SNAPSHOT_WORKFLOW_ID = /^snapshot-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/i;

/** The snapshot id of a snapshot workflow's id (lower-cased); null for any other workflow. */
export function snapshotIdOfWorkflow(workflowId: string): string | null {
  const m = SNAPSHOT_WORKFLOW_ID.exec(workflowId);
  return m ? m[1]!.toLowerCase() : null;
}

/**
 * When the next backup attempt starts after a copy failed at `failedAtMs`: the workflow sleeps
 * `backup.retry.interval` (fixed, no backoff), so this is what the snapshot shows as `nextAttemptAt`.
 * Null after the last attempt.
 */
export function nextBackupAttemptAt(failedAtMs: number, attempt: number, backup: BackupRetrySettings): Date | null {
  return attempt >= backup.maxAttempts ? null : new Date(failedAtMs + backup.retryIntervalSeconds * 1000);
}

export interface SnapshotWorkflowInput {
  snapshotId: string;
  volumeId: string;
  vmId: string | null;
  accountId: string;
  volumeType: VolumeType;
  asyncBackup: boolean;
  /** Read from configuration when the snapshot was requested. */
  backup: BackupRetrySettings & {
    /** `backup.queue.timeout`: how long a backup may wait for a backup worker (absent in older inputs). */
    queueTimeoutSeconds?: number;
    /**
     * `backup.incremental` and `snapshot.delta.max` (docs/design.md §14), absent in older inputs (a full backup).
     * The backup activity reads the same values from the snapshot's row; the workflow does not act on them.
     */
    incremental?: boolean;
    deltaMax?: number;
  };
  /** The task queue of the backup worker (the separate backup pool). */
  backupTaskQueue: string;
  /**
   * The host whose QEMU held the volume's image when the snapshot was requested (its VM was not Stopped): the
   * primary snapshot is taken on its task queue, by that QEMU (docs/design.md §15), if its worker takes it within
   * `timeoutSeconds` (VM_HOST_TIMEOUT_SECONDS). Absent: a stopped VM's or detached volume's image, snapshotted by
   * any main worker (and in executions from before it).
   */
  primaryHost?: { name: string; taskQueue: string; timeoutSeconds: number };
}

export interface SnapshotCreated {
  snapshotId: string;
  state: SnapshotState;
}

export interface SnapshotWorkflowResult {
  snapshotId: string;
  state: 'BackedUp';
  installPath: string;
  checksum: string;
  sizeBytes: number;
}

export interface SnapshotWorkflowStatus {
  snapshotId: string;
  volumeId: string;
  state: SnapshotState;
  lastError: string | null;
  /**
   * The VM the volume was attached to when the snapshot was requested (null: detached). The workflow knows no
   * later attachment: `vmActions` and `mayRun` answer for this one; the API decides from the live one.
   */
  vmId: string | null;
  /** Which VM actions on that VM may run now, by this snapshot's in-flight state. */
  vmActions: Record<VmAction, Decision> | null;
}

/** Resolves as soon as the snapshot exists on primary storage (the early return); fails if creation failed. */
export const snapshotCreatedUpdate = defineUpdate<SnapshotCreated>('snapshotCreated');
/**
 * "May this operation run now?" answered from the parallel-operation policy table, for this snapshot and the
 * attachment its volume had when it was requested (the API, deciding from live attachments, is the authority).
 */
export const mayRunQuery = defineQuery<Decision, [Operation]>('mayRun');
/** The snapshot's state and the VM actions it currently allows. */
export const statusQuery = defineQuery<SnapshotWorkflowStatus>('status');

/** Failure types the workflow raises; the API maps them to responses. */
export const FAILURE_TYPES = {
  primary: 'PrimarySnapshotFailed',
  backup: 'BackupFailed',
  cancelled: 'SnapshotCancelled',
} as const;

/**
 * Failure types the snapshot activities raise, and how the workflow reads them (the backup attempt loop in
 * workflows/snapshot-workflow.ts):
 * - `copyFailed`: the copy itself failed (store unusable, source unreadable, verification mismatch). Counts
 *   toward `backup.max.attempts`; the workflow waits `backup.retry.interval` and tries again.
 * - `interrupted`: the attempt was cut short by its worker stopping, or its bookkeeping could not reach the
 *   database. Retried by Temporal at once (so is a heartbeat timeout after a killed worker); costs no attempt.
 * - `notFound`, `illegalTransition`: the snapshot is gone or in a state the step cannot act on (a re-delivered
 *   activity, a reset workflow). Never retried.
 */
export const ACTIVITY_FAILURE_TYPES = {
  copyFailed: 'BackupCopyFailed',
  interrupted: 'BackupInterrupted',
  notFound: 'SnapshotNotFoundError',
  illegalTransition: 'IllegalSnapshotTransitionError',
} as const;

/**
 * What a snapshot activity is given. `volumeId` saves the worker a database read before the activity runs (the
 * volume on its log lines, the volume's image on the time-to-created path); executions from before it was
 * passed leave it out, and the activity looks it up.
 */
export interface SnapshotActivityInput {
  snapshotId: string;
  volumeId?: string;
}

/** Input of one backup attempt. `attempt` is absent in executions from before the workflow-level attempt loop. */
export interface BackupAttemptInput extends SnapshotActivityInput {
  /** Which copy attempt this is (1-based), counted by the workflow: only copy failures advance it. */
  attempt?: number;
  maxAttempts?: number;
}

/** The workflow id of one VM step: a VM has at most one step in flight (its row refuses others meanwhile). */
export const vmStepWorkflowId = (vmId: string, stepId: string): string => `vm-${vmId}-step-${stepId}`;

/** A VM action's hypervisor step, run on the VM's host (workflows/vm-step-workflow.ts). */
export interface VmStepWorkflowInput {
  vmId: string;
  /** The VM's host and its task queue (compute/host-queue.ts). */
  hostName: string;
  hostTaskQueue: string;
  /** How long the step may wait for the host's worker to take it (VM_HOST_TIMEOUT_SECONDS). */
  hostTimeoutSeconds: number;
  /** services/vm-steps.ts VmStep: plain data. */
  step: { kind: string } & Record<string, unknown>;
}

/** The failure types a VM step ends with; the API answers them with the same codes. */
export const VM_STEP_FAILURE_TYPES = {
  hypervisor: 'HYPERVISOR_ERROR',
  unavailable: 'HYPERVISOR_UNAVAILABLE',
} as const;
