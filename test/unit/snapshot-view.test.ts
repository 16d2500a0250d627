import { describe, expect, it } from 'vitest';
import type { SnapshotRecord } from '../../db/snapshots.js';
import { snapshotView } from '../../services/views.js';

const base: SnapshotRecord = {
  id: '00000000-0000-4000-8000-000000000001',
  accountId: '00000000-0000-4000-8000-000000000002',
  volumeId: '00000000-0000-4000-8000-000000000003',
  vmId: null,
  volumeType: 'ROOT',
  name: 's',
  status: 'BackingUp',
  asyncBackup: true,
  workflowId: 'snapshot-00000000-0000-4000-8000-000000000001',
  idempotencyKey: null,
  size: 1024,
  physicalSize: null,
  backupMaxAttempts: 3,
  backupRetryInterval: 300,
  backupQueueTimeout: 3600,
  backupIncremental: true,
  snapshotDeltaMax: 16,
  backupAttempts: 1,
  backupBytesDone: 512,
  backupBytesTotal: 1024,
  nextAttemptAt: null,
  lastError: null,
  createdAt: '2026-11-29T10:00:00.000Z',
  updatedAt: '2026-11-29T10:00:00.000Z',
  removedAt: null,
};
const at = (seconds: number) => Date.parse(base.updatedAt) + seconds * 1000;

describe('snapshot view: a copy whose worker went away', () => {
  it('a copy that wrote recently shows no error', () => {
    expect(snapshotView(base, [], at(5)).backup.lastError).toBeNull();
  });

  it('a copy silent for longer than a live one ever is shows as interrupted and resuming, not as a frozen bar', () => {
    expect(snapshotView(base, [], at(60)).backup.lastError).toMatch(/attempt 1 interrupted: no progress for 60 s.*resuming/);
  });

  it('a wait between attempts, or a finished snapshot, is not taken for a lost worker', () => {
    const waiting = { ...base, nextAttemptAt: '2026-11-29T10:05:00.000Z', lastError: 'image store unusable' };
    expect(snapshotView(waiting, [], at(60)).backup.lastError).toBe('image store unusable');
    expect(snapshotView({ ...base, status: 'BackedUp' }, [], at(600)).backup.lastError).toBeNull();
  });
});

describe('snapshot view: host paths in the last error', () => {
  const failed = { ...base, status: 'Error' as const, lastError: 'copy failed: ENOTDIR: not a directory, mkdir /var/lib/volsnap/secondary/snapshots/x' };

  it('an admin reads them whole, as in the events', () => {
    expect(snapshotView(failed, [], at(5), true).backup.lastError).toBe(failed.lastError);
  });

  it('anyone else reads them shortened to their last segment', () => {
    const shown = snapshotView(failed, [], at(5), false).backup.lastError!;
    expect(shown).toBe('copy failed: ENOTDIR: not a directory, mkdir …/x');
    expect(shown).not.toContain('/var/lib');
  });
});
