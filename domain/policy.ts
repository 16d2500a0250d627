/**
 * The parallel-operation policy while a snapshot is being created or backed up (docs/design.md §6, the
 * seed's list). One declarative table read by the workflow query, the API and the tests.
 * Pure and deterministic: workflow code imports it.
 */

export const VM_ACTIONS = [
  'start',
  'stop',
  'reboot',
  'destroy',
  'reinstall',
  'attach-iso',
  'detach-iso',
  'attach-volume',
  'detach-volume',
  'change-service-offering',
  'migrate',
] as const;
export type VmAction = (typeof VM_ACTIONS)[number];

/** `revert`: rewrite V from one of its snapshots. */
export const VOLUME_ACTIONS = ['snapshot', 'resize', 'migrate', 'delete', 'revert'] as const;
export type VolumeAction = (typeof VOLUME_ACTIONS)[number];

export const SNAPSHOT_ACTIONS = ['delete', 'revert', 'create-volume'] as const;
export type SnapshotAction = (typeof SNAPSHOT_ACTIONS)[number];

export type VolumeType = 'ROOT' | 'DATADISK';

/**
 * How an operation relates to an in-flight snapshot S of volume V (type T) attached to VM M:
 * - `allowed`: may run.
 * - `datadisk-only`: may run only if T is DATADISK.
 * - `unless-target-is-backing-up-volume`: may run unless the volume it acts on is V.
 * - `forbidden`: may not run.
 */
export type Rule = 'allowed' | 'datadisk-only' | 'unless-target-is-backing-up-volume' | 'forbidden';

/** Operations on M while one of its volumes has a snapshot in flight. */
export const VM_ACTION_POLICY: Readonly<Record<VmAction, Rule>> = {
  start: 'allowed',
  stop: 'allowed',
  reboot: 'allowed',
  destroy: 'datadisk-only',
  reinstall: 'datadisk-only',
  'attach-iso': 'allowed',
  'attach-volume': 'allowed',
  'change-service-offering': 'allowed',
  'detach-volume': 'unless-target-is-backing-up-volume',
  'detach-iso': 'forbidden',
  migrate: 'forbidden',
};

/** Operations on V itself while it has a snapshot in flight. */
export const VOLUME_ACTION_POLICY: Readonly<Record<VolumeAction, Rule>> = {
  snapshot: 'allowed',
  resize: 'forbidden',
  migrate: 'forbidden',
  delete: 'forbidden',
  revert: 'forbidden',
};

/** Operations on S itself while it is in flight: none. */
export const SNAPSHOT_ACTION_POLICY: Readonly<Record<SnapshotAction, Rule>> = {
  delete: 'forbidden',
  revert: 'forbidden',
  'create-volume': 'forbidden',
};

/** A snapshot that is still being created or backed up. */
export interface InFlightSnapshot {
  snapshotId: string;
  volumeId: string;
  volumeType: VolumeType;
  /** The VM the volume is attached to, if any. */
  vmId: string | null;
}

/** An operation someone wants to run. */
export type Operation =
  | { kind: 'vm'; action: VmAction; vmId: string; /** the disk attached or detached */ volumeId?: string }
  | { kind: 'volume'; action: VolumeAction; volumeId: string }
  | { kind: 'snapshot'; action: SnapshotAction; snapshotId: string };

export type Decision =
  | { allowed: true }
  | { allowed: false; snapshotId: string; volumeId: string; reason: string };

function ruleFor(op: Operation, s: InFlightSnapshot): Rule | undefined {
  switch (op.kind) {
    case 'vm':
      return s.vmId !== null && op.vmId === s.vmId ? VM_ACTION_POLICY[op.action] : undefined;
    case 'volume':
      return op.volumeId === s.volumeId ? VOLUME_ACTION_POLICY[op.action] : undefined;
    case 'snapshot':
      return op.snapshotId === s.snapshotId ? SNAPSHOT_ACTION_POLICY[op.action] : undefined;
  }
}

function describe(op: Operation): string {
  return op.kind === 'vm' ? `VM action ${op.action}` : `${op.kind} action ${op.action}`;
}

/** Decides one operation against one in-flight snapshot. */
export function decideAgainst(op: Operation, s: InFlightSnapshot): Decision {
  const rule = ruleFor(op, s);
  const refuse = (why: string): Decision => ({
    allowed: false,
    snapshotId: s.snapshotId,
    volumeId: s.volumeId,
    reason: `${describe(op)} is not allowed while snapshot ${s.snapshotId} of volume ${s.volumeId} is being backed up: ${why}`,
  });
  switch (rule) {
    case undefined:
    case 'allowed':
      return { allowed: true };
    case 'datadisk-only':
      return s.volumeType === 'DATADISK' ? { allowed: true } : refuse('it is allowed only while a DATADISK backs up, and this is the ROOT disk');
    case 'unless-target-is-backing-up-volume':
      return op.kind === 'vm' && op.volumeId === s.volumeId ? refuse('that disk is the one backing up') : { allowed: true };
    case 'forbidden':
      return refuse('it has to wait until the backup has finished');
  }
}

/** Decides an operation against every in-flight snapshot; the first refusal wins. */
export function decide(op: Operation, inFlight: readonly InFlightSnapshot[]): Decision {
  for (const s of inFlight) {
    const d = decideAgainst(op, s);
    if (!d.allowed) return d;
  }
  return { allowed: true };
}

/** Every VM action's decision for VM `vmId`, as the allowed-actions endpoint and the workflow query show it. */
export function vmActionDecisions(
  vmId: string,
  inFlight: readonly InFlightSnapshot[],
): Record<VmAction, Decision> {
  const out = {} as Record<VmAction, Decision>;
  for (const action of VM_ACTIONS) {
    // detach-volume depends on which disk: answer for the disks that are backing up (the restrictive case).
    const volumeIds = action === 'detach-volume' ? inFlight.filter((s) => s.vmId === vmId).map((s) => s.volumeId) : [undefined];
    let decision: Decision = { allowed: true };
    for (const volumeId of volumeIds) {
      const d = decide({ kind: 'vm', action, vmId, ...(volumeId ? { volumeId } : {}) }, inFlight);
      if (!d.allowed) {
        decision = d;
        break;
      }
    }
    out[action] = decision;
  }
  return out;
}

/*
 * Volumes in a transitional state (Migrating, Resizing, a new volume Creating): their storage work runs outside
 * any transaction, so the row locks no longer keep other requests away while it runs. This second table does:
 * a conflicting request is refused at once (409 VOLUME_BUSY) instead of waiting minutes behind the copy.
 */

/** A volume whose storage work is in progress. */
export interface BusyVolume {
  volumeId: string;
  /** Migrating, Resizing or Creating. */
  state: string;
  volumeType: VolumeType;
  /** The VM the volume is attached to, if any. */
  vmId: string | null;
  /** For a volume being created from a snapshot: that snapshot (its backup is being read). */
  sourceSnapshotId?: string | null;
}

/** Operations on M while one of its volumes is busy: the VM keeps running; nothing may touch that disk. */
export const VM_ACTION_POLICY_WHILE_VOLUME_BUSY: Readonly<Record<VmAction, Rule>> = {
  start: 'allowed',
  stop: 'allowed',
  reboot: 'allowed',
  // Destroying or reinstalling deletes the ROOT disk; a busy DATADISK is only detached.
  destroy: 'datadisk-only',
  reinstall: 'datadisk-only',
  'attach-iso': 'allowed',
  'detach-iso': 'allowed',
  'attach-volume': 'unless-target-is-backing-up-volume',
  'detach-volume': 'unless-target-is-backing-up-volume',
  'change-service-offering': 'allowed',
  migrate: 'forbidden',
};

/** Operations on a busy volume itself: none (each would change or move the image under the running work). */
export const VOLUME_ACTION_POLICY_WHILE_BUSY: Readonly<Record<VolumeAction, Rule>> = {
  snapshot: 'forbidden',
  resize: 'forbidden',
  migrate: 'forbidden',
  delete: 'forbidden',
  revert: 'forbidden',
};

/**
 * Operations on a snapshot S whose volume is busy, or from whose backup a new volume is being created:
 * deleting or reverting would change the image (or remove the backup) being worked on; creating another
 * volume from S only reads its backup.
 */
export const SNAPSHOT_ACTION_POLICY_WHILE_VOLUME_BUSY: Readonly<Record<SnapshotAction, Rule>> = {
  delete: 'forbidden',
  revert: 'forbidden',
  'create-volume': 'allowed',
};

export type BusyDecision = { allowed: true } | { allowed: false; volumeId: string; state: string; reason: string };

/**
 * Decides `op` against volumes whose storage work is in progress; the first refusal wins. A snapshot
 * operation needs `snapshotVolumeId` (the volume S belongs to).
 */
export function decideBusy(op: Operation, busy: readonly BusyVolume[], snapshotVolumeId?: string): BusyDecision {
  for (const b of busy) {
    let rule: Rule | undefined;
    if (op.kind === 'vm') {
      if (op.volumeId === b.volumeId && (op.action === 'attach-volume' || op.action === 'detach-volume')) rule = 'forbidden';
      else if (b.vmId !== null && b.vmId === op.vmId) rule = VM_ACTION_POLICY_WHILE_VOLUME_BUSY[op.action];
    } else if (op.kind === 'volume') {
      if (op.volumeId === b.volumeId) rule = VOLUME_ACTION_POLICY_WHILE_BUSY[op.action];
    } else if (b.volumeId === snapshotVolumeId) {
      rule = SNAPSHOT_ACTION_POLICY_WHILE_VOLUME_BUSY[op.action];
    } else if (b.sourceSnapshotId === op.snapshotId) {
      // A volume is being created from S's backup: only deleting S (and that backup) would disturb it.
      rule = op.action === 'delete' ? 'forbidden' : 'allowed';
    }
    const refused =
      rule === 'forbidden' ||
      (rule === 'datadisk-only' && b.volumeType !== 'DATADISK') ||
      (rule === 'unless-target-is-backing-up-volume' && op.kind === 'vm' && op.volumeId === b.volumeId);
    if (refused) {
      return {
        allowed: false,
        volumeId: b.volumeId,
        state: b.state,
        reason: `${describe(op)} is not allowed while volume ${b.volumeId} is ${b.state}; try again when it is Ready`,
      };
    }
  }
  return { allowed: true };
}
