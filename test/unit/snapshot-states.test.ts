import { describe, expect, it } from 'vitest';
import {
  IllegalSnapshotTransitionError,
  SNAPSHOT_STATES,
  canTransition,
  isInProgress,
  isSnapshotState,
  type SnapshotState,
} from '../../domain/snapshot-states.js';

const STATES: SnapshotState[] = [
  'Allocated',
  'Creating',
  'CreatedOnPrimary',
  'BackingUp',
  'BackedUp',
  'Error',
  'Destroying',
  'Destroyed',
];

/** docs/design.md §4, written out independently of SNAPSHOT_TRANSITIONS. */
const DESIGN_TRANSITIONS: Array<[SnapshotState, SnapshotState]> = [
  ['Allocated', 'Creating'],
  ['Creating', 'CreatedOnPrimary'],
  ['CreatedOnPrimary', 'BackingUp'],
  ['BackingUp', 'BackedUp'],
  ['Creating', 'Error'],
  ['BackingUp', 'Error'],
  ['BackedUp', 'Destroying'],
  ['Destroying', 'Destroyed'],
  ['Error', 'Destroyed'],
];

/**
 * The failure edges of docs/design.md §4 beyond the specification's own list: the workflow's markSnapshotError
 * may run before the row left Allocated (primary creation failed at once) or before it reached BackingUp; the GC
 * reconciler moves a snapshot whose workflow is gone to Error from any in-flight state; a failed deletion is
 * left in Error for storage GC. Each still ends in Error, which only GC leaves (to Destroyed).
 */
const FAILURE_EXTENSIONS: Array<[SnapshotState, SnapshotState]> = [
  ['Allocated', 'Error'],
  ['CreatedOnPrimary', 'Error'],
  ['Destroying', 'Error'],
];

const EXPECTED_ALLOWED = [...DESIGN_TRANSITIONS, ...FAILURE_EXTENSIONS];
const key = (from: SnapshotState, to: SnapshotState): string => `${from}->${to}`;
const allowedKeys = new Set(EXPECTED_ALLOWED.map(([f, t]) => key(f, t)));

describe('states', () => {
  it('are exactly the CloudStack Snapshot.State names of docs/design.md §4', () => {
    expect([...SNAPSHOT_STATES].sort()).toEqual([...STATES].sort());
  });

  it('isSnapshotState recognises the states and nothing else', () => {
    for (const s of STATES) expect(isSnapshotState(s)).toBe(true);
    for (const s of ['', 'backedup', 'Ready', 'BackingUP', 'constructor', 'toString']) expect(isSnapshotState(s), s).toBe(false);
  });
});

describe('legal transitions (docs/design.md §4)', () => {
  it.each(DESIGN_TRANSITIONS)('%s -> %s is allowed', (from, to) => {
    expect(canTransition(from, to)).toBe(true);
  });

  it.each(FAILURE_EXTENSIONS)('%s -> %s (failure edge to Error) is allowed', (from, to) => {
    expect(canTransition(from, to)).toBe(true);
  });

  it('the happy path Allocated → … → Destroyed is walkable', () => {
    const path: SnapshotState[] = ['Allocated', 'Creating', 'CreatedOnPrimary', 'BackingUp', 'BackedUp', 'Destroying', 'Destroyed'];
    for (let i = 1; i < path.length; i++) expect(canTransition(path[i - 1]!, path[i]!), key(path[i - 1]!, path[i]!)).toBe(true);
  });
});

describe('illegal transitions', () => {
  const ILLEGAL: Array<[SnapshotState, SnapshotState]> = [
    ['Allocated', 'BackedUp'],
    ['Allocated', 'BackingUp'],
    ['Allocated', 'CreatedOnPrimary'],
    ['Allocated', 'Destroyed'],
    ['Creating', 'BackedUp'],
    ['Creating', 'BackingUp'],
    ['Creating', 'Allocated'],
    ['CreatedOnPrimary', 'BackedUp'],
    ['CreatedOnPrimary', 'Creating'],
    ['BackingUp', 'CreatedOnPrimary'],
    ['BackingUp', 'Destroyed'],
    ['BackedUp', 'BackingUp'],
    ['BackedUp', 'Error'],
    ['BackedUp', 'Destroyed'],
    ['Error', 'BackingUp'],
    ['Error', 'BackedUp'],
    ['Error', 'Creating'],
    ['Error', 'Destroying'],
    ['Destroying', 'BackedUp'],
    ...STATES.map((to): [SnapshotState, SnapshotState] => ['Destroyed', to]),
    ...STATES.map((s): [SnapshotState, SnapshotState] => [s, s]),
  ];

  it.each(ILLEGAL)('%s -> %s is refused', (from, to) => {
    expect(canTransition(from, to)).toBe(false);
  });

  it('Destroyed is terminal', () => {
    expect(STATES.filter((to) => canTransition('Destroyed', to))).toEqual([]);
  });

  it('exhaustive: every one of the 64 pairs is allowed iff it is in the expected set', () => {
    const mismatches: string[] = [];
    for (const from of STATES) {
      for (const to of STATES) {
        const expected = allowedKeys.has(key(from, to));
        if (canTransition(from, to) !== expected) mismatches.push(`${key(from, to)} expected ${expected ? 'allowed' : 'refused'}`);
      }
    }
    expect(mismatches).toEqual([]);
  });
});

describe('isInProgress', () => {
  it.each(['Creating', 'CreatedOnPrimary', 'BackingUp'] as SnapshotState[])('%s is in flight (the section 6 policy applies)', (s) => {
    expect(isInProgress(s)).toBe(true);
  });

  // The row exists as Allocated before the workflow creates it on primary; treating it as in flight keeps a
  // ROOT destroy from slipping in between the insert and Creating.
  it('Allocated is in flight', () => {
    expect(isInProgress('Allocated')).toBe(true);
  });

  it.each(['BackedUp', 'Error', 'Destroying', 'Destroyed'] as SnapshotState[])('%s is not in flight', (s) => {
    expect(isInProgress(s)).toBe(false);
  });
});

describe('IllegalSnapshotTransitionError', () => {
  it('names the snapshot and both states', () => {
    const err = new IllegalSnapshotTransitionError('snap-1234', 'Allocated', 'BackedUp');
    expect(err).toBeInstanceOf(Error);
    expect(err.name).toBe('IllegalSnapshotTransitionError');
    expect(err.message).toContain('snap-1234');
    expect(err.message).toContain('Allocated');
    expect(err.message).toContain('BackedUp');
    expect(err.message.indexOf('Allocated')).toBeLessThan(err.message.indexOf('BackedUp'));
    expect(err.snapshotId).toBe('snap-1234');
    expect(err.from).toBe('Allocated');
    expect(err.to).toBe('BackedUp');
  });
});
