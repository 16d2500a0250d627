import { describe, expect, it } from 'vitest';
import {
  SNAPSHOT_ACTIONS,
  VM_ACTIONS,
  VM_ACTION_POLICY,
  VOLUME_ACTIONS,
  decide,
  decideAgainst,
  vmActionDecisions,
  type Decision,
  type InFlightSnapshot,
  type Operation,
  type SnapshotAction,
  type VmAction,
  type VolumeAction,
  type VolumeType,
} from '../../domain/policy.js';

/*
 * Expected behaviour written independently from the seed ("Parallel operations that can happen during backing
 * up of snapshot") and docs/design.md §6. Deliberately NOT derived from VM_ACTION_POLICY.
 *
 * Seed, VM operations allowed in parallel:
 *   Start VM, Stop VM, Destroy VM (only when data disks are backing up), Reboot VM,
 *   Reinstall VM (only when data disks are backing up), Attach ISO, Attach disk,
 *   Detach disk (other than the one backing up), Change service offering.
 * "All the other VM/Volume operations not listed above are not supported."
 */

/** The VM actions of the HTTP contract (docs/design.md §8). */
const CONTRACT_VM_ACTIONS = [
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

/** Allowed? for an action on M while S (of V, type T, attached to M) is in flight. detach-volume: see below. */
const EXPECTED_VM: Record<Exclude<VmAction, 'detach-volume'>, Record<VolumeType, boolean>> = {
  start: { ROOT: true, DATADISK: true },
  stop: { ROOT: true, DATADISK: true },
  reboot: { ROOT: true, DATADISK: true },
  destroy: { ROOT: false, DATADISK: true },
  reinstall: { ROOT: false, DATADISK: true },
  'attach-iso': { ROOT: true, DATADISK: true },
  'attach-volume': { ROOT: true, DATADISK: true },
  'change-service-offering': { ROOT: true, DATADISK: true },
  'detach-iso': { ROOT: false, DATADISK: false },
  migrate: { ROOT: false, DATADISK: false },
};

/** Actions on V itself: only another snapshot is allowed. */
const EXPECTED_VOLUME_ON_V: Record<VolumeAction, boolean> = {
  snapshot: true,
  resize: false,
  migrate: false,
  delete: false,
  // Reverting V from another of its snapshots rewrites V: "anything else on V" is refused.
  revert: false,
};

/** Any operation on S itself is refused. */
const EXPECTED_SNAPSHOT_ACTIONS = ['delete', 'revert', 'create-volume'];

const M = 'vm-m-0000';
const OTHER_VM = 'vm-other-0000';
const V = 'vol-v-0000';
const OTHER_VOLUME = 'vol-other-0000';
const S = 'snap-s-0000';
const OTHER_SNAPSHOT = 'snap-other-0000';

const TYPES: VolumeType[] = ['ROOT', 'DATADISK'];

function inFlight(volumeType: VolumeType, over: Partial<InFlightSnapshot> = {}): InFlightSnapshot {
  return { snapshotId: S, volumeId: V, volumeType, vmId: M, ...over };
}

function vmOp(action: VmAction, vmId = M, volumeId?: string): Operation {
  return volumeId === undefined ? { kind: 'vm', action, vmId } : { kind: 'vm', action, vmId, volumeId };
}

/** The disk an attach/detach acts on; other actions take none. */
function diskFor(action: VmAction): string | undefined {
  return action === 'attach-volume' || action === 'detach-volume' ? OTHER_VOLUME : undefined;
}

function expectRefusedBy(d: Decision, snapshotId: string, volumeId: string, action?: string): void {
  expect(d.allowed).toBe(false);
  if (d.allowed) return;
  expect(d.snapshotId).toBe(snapshotId);
  expect(d.volumeId).toBe(volumeId);
  expect(d.reason).toContain(snapshotId);
  expect(d.reason).toContain(volumeId);
  if (action) expect(d.reason).toContain(action);
}

describe('the policy table covers exactly the contract', () => {
  it('lists exactly the VM actions of the HTTP contract', () => {
    expect([...VM_ACTIONS].sort()).toEqual([...CONTRACT_VM_ACTIONS].sort());
    expect(new Set(VM_ACTIONS).size).toBe(VM_ACTIONS.length);
    expect(Object.keys(VM_ACTION_POLICY).sort()).toEqual([...CONTRACT_VM_ACTIONS].sort());
  });

  it('the expected table in this test covers every contract VM action', () => {
    expect([...Object.keys(EXPECTED_VM), 'detach-volume'].sort()).toEqual([...CONTRACT_VM_ACTIONS].sort());
  });

  it('lists the volume actions snapshot, resize, migrate, delete', () => {
    expect([...VOLUME_ACTIONS].sort()).toEqual(Object.keys(EXPECTED_VOLUME_ON_V).sort());
  });

  it('lists the snapshot actions delete, revert, create-volume', () => {
    expect([...SNAPSHOT_ACTIONS].sort()).toEqual([...EXPECTED_SNAPSHOT_ACTIONS].sort());
  });
});

describe('VM actions on M while a snapshot of one of its volumes is in flight (seed list)', () => {
  const cases = Object.entries(EXPECTED_VM).flatMap(([action, byType]) =>
    TYPES.map((type) => ({ action: action as VmAction, type, allowed: byType[type] })),
  );

  it.each(cases)('$action with a $type snapshot in flight → allowed=$allowed', ({ action, type, allowed }) => {
    const d = decide(vmOp(action, M, diskFor(action)), [inFlight(type)]);
    if (allowed) expect(d).toEqual({ allowed: true });
    else expectRefusedBy(d, S, V, action);
    // The single-snapshot decision agrees.
    expect(decideAgainst(vmOp(action, M, diskFor(action)), inFlight(type))).toEqual(d);
  });

  it('covers every VM action the product has (but detach-volume, below) with a snapshot of each volume type', () => {
    const covered = new Set(cases.map((c) => `${c.action}/${c.type}`));
    const product = VM_ACTIONS.filter((a) => a !== 'detach-volume').flatMap((a) => TYPES.map((t) => `${a}/${t}`));
    expect([...covered].sort()).toEqual(product.sort());
  });

  it.each(TYPES)('detach-volume of the disk that is backing up (%s) is refused', (type) => {
    expectRefusedBy(decide(vmOp('detach-volume', M, V), [inFlight(type)]), S, V, 'detach-volume');
  });

  it.each(TYPES)('detach-volume of another disk of M while a %s snapshot is in flight is allowed', (type) => {
    expect(decide(vmOp('detach-volume', M, OTHER_VOLUME), [inFlight(type)])).toEqual({ allowed: true });
  });

  it('ROOT: destroy and reinstall are refused with a reason about the ROOT disk; DATADISK: both allowed', () => {
    for (const action of ['destroy', 'reinstall'] as const) {
      const root = decide(vmOp(action), [inFlight('ROOT')]);
      expectRefusedBy(root, S, V, action);
      expect(decide(vmOp(action), [inFlight('DATADISK')])).toEqual({ allowed: true });
    }
  });
});

describe('operations on another VM are unaffected', () => {
  it.each(TYPES)('every VM action on another VM is allowed while a %s snapshot of M is in flight', (type) => {
    for (const action of CONTRACT_VM_ACTIONS) {
      expect(decide(vmOp(action, OTHER_VM, diskFor(action)), [inFlight(type)]), action).toEqual({ allowed: true });
    }
  });

  it('VM actions on M are unaffected by an in-flight snapshot of a volume attached to another VM', () => {
    for (const action of CONTRACT_VM_ACTIONS) {
      const d = decide(vmOp(action, M, diskFor(action)), [inFlight('ROOT', { vmId: OTHER_VM })]);
      expect(d, action).toEqual({ allowed: true });
    }
  });

  it('VM actions are unaffected by an in-flight snapshot of a detached volume (vmId null)', () => {
    for (const action of CONTRACT_VM_ACTIONS) {
      const d = decide(vmOp(action, M, diskFor(action)), [inFlight('DATADISK', { vmId: null })]);
      expect(d, action).toEqual({ allowed: true });
    }
  });
});

describe('volume actions', () => {
  const cases = Object.entries(EXPECTED_VOLUME_ON_V).flatMap(([action, allowed]) =>
    TYPES.map((type) => ({ action: action as VolumeAction, type, allowed })),
  );

  it.each(cases)('$action on V ($type, in flight) → allowed=$allowed', ({ action, type, allowed }) => {
    const d = decide({ kind: 'volume', action, volumeId: V }, [inFlight(type)]);
    if (allowed) expect(d).toEqual({ allowed: true });
    else expectRefusedBy(d, S, V, action);
  });

  it.each(cases)('$action on another volume ($type snapshot of V in flight) is allowed', ({ action, type }) => {
    expect(decide({ kind: 'volume', action, volumeId: OTHER_VOLUME }, [inFlight(type)])).toEqual({ allowed: true });
  });

  it('volume actions on a detached V in flight are still governed by the table', () => {
    const s = inFlight('DATADISK', { vmId: null });
    expect(decide({ kind: 'volume', action: 'snapshot', volumeId: V }, [s])).toEqual({ allowed: true });
    expectRefusedBy(decide({ kind: 'volume', action: 'delete', volumeId: V }, [s]), S, V, 'delete');
  });
});

describe('snapshot actions', () => {
  it.each(EXPECTED_SNAPSHOT_ACTIONS.flatMap((action) => TYPES.map((type) => ({ action, type }))))(
    '$action on S ($type) is refused; on another snapshot it is allowed',
    ({ action, type }) => {
      const a = action as SnapshotAction;
      expectRefusedBy(decide({ kind: 'snapshot', action: a, snapshotId: S }, [inFlight(type)]), S, V, action);
      expect(decide({ kind: 'snapshot', action: a, snapshotId: OTHER_SNAPSHOT }, [inFlight(type)])).toEqual({
        allowed: true,
      });
    },
  );
});

describe('no in-flight snapshots', () => {
  it('allows every VM, volume and snapshot action', () => {
    const ops: Operation[] = [
      ...CONTRACT_VM_ACTIONS.flatMap((action) => [vmOp(action), vmOp(action, M, V)]),
      ...Object.keys(EXPECTED_VOLUME_ON_V).map((action) => ({ kind: 'volume', action, volumeId: V }) as Operation),
      ...EXPECTED_SNAPSHOT_ACTIONS.map((action) => ({ kind: 'snapshot', action, snapshotId: S }) as Operation),
    ];
    for (const op of ops) expect(decide(op, []), JSON.stringify(op)).toEqual({ allowed: true });
  });

  it('vmActionDecisions allows every VM action', () => {
    const all = vmActionDecisions(M, []);
    expect(Object.keys(all).sort()).toEqual([...CONTRACT_VM_ACTIONS].sort());
    for (const action of CONTRACT_VM_ACTIONS) expect(all[action], action).toEqual({ allowed: true });
  });
});

describe('two in-flight snapshots on the same VM (ROOT and DATADISK)', () => {
  const ROOT_SNAP = 'snap-root-0000';
  const ROOT_VOL = 'vol-root-0000';
  const DATA_SNAP = 'snap-data-0000';
  const DATA_VOL = 'vol-data-0000';
  const root = inFlight('ROOT', { snapshotId: ROOT_SNAP, volumeId: ROOT_VOL });
  const data = inFlight('DATADISK', { snapshotId: DATA_SNAP, volumeId: DATA_VOL });

  it.each([
    { order: 'ROOT first', list: [root, data] },
    { order: 'DATADISK first', list: [data, root] },
  ])('destroy and reinstall are refused, naming the ROOT snapshot ($order)', ({ list }) => {
    for (const action of ['destroy', 'reinstall'] as const) {
      expectRefusedBy(decide(vmOp(action), list), ROOT_SNAP, ROOT_VOL, action);
    }
  });

  it('detach of either backing-up disk is refused, naming that disk; start is allowed', () => {
    expectRefusedBy(decide(vmOp('detach-volume', M, DATA_VOL), [root, data]), DATA_SNAP, DATA_VOL);
    expectRefusedBy(decide(vmOp('detach-volume', M, ROOT_VOL), [data, root]), ROOT_SNAP, ROOT_VOL);
    expect(decide(vmOp('detach-volume', M, OTHER_VOLUME), [root, data])).toEqual({ allowed: true });
    expect(decide(vmOp('start'), [root, data])).toEqual({ allowed: true });
  });

  it('vmActionDecisions refuses destroy, naming the ROOT snapshot, in either order', () => {
    expectRefusedBy(vmActionDecisions(M, [data, root]).destroy, ROOT_SNAP, ROOT_VOL, 'destroy');
    expectRefusedBy(vmActionDecisions(M, [root, data]).destroy, ROOT_SNAP, ROOT_VOL, 'destroy');
  });
});

describe('vmActionDecisions', () => {
  it.each(TYPES)('returns an entry for every VM action and agrees with decide() (%s in flight)', (type) => {
    const list = [inFlight(type)];
    const all = vmActionDecisions(M, list);
    expect(Object.keys(all).sort()).toEqual([...CONTRACT_VM_ACTIONS].sort());
    for (const action of CONTRACT_VM_ACTIONS) {
      // detach-volume is answered for the restrictive case: the disk that is backing up.
      const op = action === 'detach-volume' ? vmOp(action, M, V) : vmOp(action);
      expect(all[action], action).toEqual(decide(op, list));
    }
  });

  it.each(TYPES)('matches the expected table (%s in flight)', (type) => {
    const all = vmActionDecisions(M, [inFlight(type)]);
    for (const [action, byType] of Object.entries(EXPECTED_VM)) {
      expect(all[action as VmAction].allowed, action).toBe(byType[type]);
    }
    expectRefusedBy(all['detach-volume'], S, V, 'detach-volume');
  });

  it('for another VM every action is allowed', () => {
    const all = vmActionDecisions(OTHER_VM, [inFlight('ROOT')]);
    for (const action of CONTRACT_VM_ACTIONS) expect(all[action], action).toEqual({ allowed: true });
  });
});
