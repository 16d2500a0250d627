/** Snapshot lifecycle states, as CloudStack's Snapshot.State (docs/design.md §4). */
export const SNAPSHOT_STATES = [
  'Allocated',
  'Creating',
  'CreatedOnPrimary',
  'BackingUp',
  'BackedUp',
  'Error',
  'Destroying',
  'Destroyed',
] as const;

export type SnapshotState = (typeof SNAPSHOT_STATES)[number];

/** The only transitions a snapshot may take; anything else is a bug or a race and is refused. */
export const SNAPSHOT_TRANSITIONS: Readonly<Record<SnapshotState, readonly SnapshotState[]>> = {
  Allocated: ['Creating', 'Error'],
  Creating: ['CreatedOnPrimary', 'Error'],
  CreatedOnPrimary: ['BackingUp', 'Error'],
  BackingUp: ['BackedUp', 'Error'],
  BackedUp: ['Destroying'],
  Destroying: ['Destroyed', 'Error'],
  Error: ['Destroyed'],
  Destroyed: [],
};

/** States in which a backup is still in flight: the parallel-operation policy applies (docs/design.md §6). */
export const IN_PROGRESS_STATES: readonly SnapshotState[] = ['Allocated', 'Creating', 'CreatedOnPrimary', 'BackingUp'];

export function canTransition(from: SnapshotState, to: SnapshotState): boolean {
  return SNAPSHOT_TRANSITIONS[from].includes(to);
}

export function isInProgress(state: SnapshotState): boolean {
  return IN_PROGRESS_STATES.includes(state);
}

export function isSnapshotState(value: string): value is SnapshotState {
  return (SNAPSHOT_STATES as readonly string[]).includes(value);
}

/** Thrown when a caller asks for a transition the state machine does not allow. */
export class IllegalSnapshotTransitionError extends Error {
  override readonly name = 'IllegalSnapshotTransitionError';
  constructor(
    readonly snapshotId: string,
    readonly from: SnapshotState,
    readonly to: SnapshotState,
  ) {
    super(`snapshot ${snapshotId}: illegal transition ${from} -> ${to}`);
  }
}
