import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { MockActivityEnvironment } from '@temporalio/testing';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSnapshotActivities } from '../../activities/snapshot-activities.js';
import { embeddedDatabaseUrl } from '../../db/embedded.js';
import { EVENTS_CHANNEL } from '../../db/events.js';
import { getSnapshot, transitionSnapshot } from '../../db/snapshots.js';
import { IllegalSnapshotTransitionError } from '../../domain/snapshot-states.js';
import { insertAccount, insertVolume } from '../support/fixtures.js';
import { silentLogger } from '../../observability/logger.js';
import { startTestStack, type TestStack } from '../../harness/stack.js';

/** transitionSnapshot on real PostgreSQL: the state machine, its events and their announcements, under races. */
describe('snapshot state transitions', () => {
  let stack: TestStack;
  let accountId: string;
  let volumeId: string;
  let volumePath: string;
  let listener: pg.Client;
  const announced: string[] = [];

  beforeAll(async () => {
    stack = await startTestStack({ roles: [] });
    accountId = await insertAccount(stack.pool);
    ({ volumeId, path: volumePath } = await insertVolume(stack.pool, stack.drivers.KVM!, { accountId, sizeBytes: 1024 * 1024 }));
    listener = new pg.Client({ connectionString: stack.env.DATABASE_URL ?? embeddedDatabaseUrl(stack.env.EMBEDDED_PG_PORT) });
    await listener.connect();
    listener.on('notification', (n) => announced.push(n.payload ?? ''));
    await listener.query(`LISTEN ${EVENTS_CHANNEL}`);
  });
  afterAll(async () => {
    await listener?.end();
    await stack?.stop();
  });

  async function newSnapshot(): Promise<string> {
    const id = randomUUID();
    await stack.pool.query(
      `INSERT INTO snapshots (id, account_id, volume_id, volume_type, name, status, async_backup, workflow_id,
                              backup_max_attempts, backup_retry_interval, backup_bytes_total)
       VALUES ($1, $2, $3, 'ROOT', $4, 'Allocated', true, $5, 3, 300, 1048576)`,
      [id, accountId, volumeId, `s-${id.slice(0, 8)}`, `test-${id}`],
    );
    return id;
  }
  const eventsOf = async (id: string) =>
    (await stack.pool.query('SELECT id, type, level, account_id, details FROM events WHERE resource_id = $1 ORDER BY id', [id])).rows;

  it('moves along the state machine, sets the extra columns, records the event and announces it', async () => {
    const id = await newSnapshot();
    const moved = await transitionSnapshot(stack.pool, id, 'Creating', {
      event: { type: 'SNAPSHOT.CREATE', description: 'creating', details: { note: 'kept' } },
    });
    expect(moved.changed).toBe(true);
    expect(moved.snapshot).toMatchObject({ id, status: 'Creating', accountId, volumeId });

    const created = await transitionSnapshot(stack.pool, id, 'CreatedOnPrimary', {
      set: { size: 4096 },
      event: { type: 'SNAPSHOT.CREATE', level: 'WARN', description: 'created' },
    });
    expect(created.snapshot).toMatchObject({ status: 'CreatedOnPrimary', size: 4096 });
    expect((await getSnapshot(stack.pool, id))?.size).toBe(4096);

    const events = await eventsOf(id);
    expect(events.map((e) => [e.type, e.level, e.account_id, e.details.from, e.details.to])).toEqual([
      ['SNAPSHOT.CREATE', 'INFO', accountId, 'Allocated', 'Creating'],
      ['SNAPSHOT.CREATE', 'WARN', accountId, 'Creating', 'CreatedOnPrimary'],
    ]);
    expect(events[0].details).toEqual({ note: 'kept', snapshotId: id, volumeId, from: 'Allocated', to: 'Creating' });
    await expect.poll(() => announced).toEqual(expect.arrayContaining(events.map((e) => String(e.id))));
  });

  it('being in the target state already is a no-op without an event', async () => {
    const id = await newSnapshot();
    await transitionSnapshot(stack.pool, id, 'Creating', { event: { type: 'SNAPSHOT.CREATE', description: 'creating' } });
    const again = await transitionSnapshot(stack.pool, id, 'Creating', { set: { size: 1 }, event: { type: 'SNAPSHOT.CREATE', description: 'again' } });
    expect(again).toMatchObject({ changed: false, snapshot: { status: 'Creating', size: null } });
    expect(await eventsOf(id)).toHaveLength(1);
  });

  it('an illegal move throws and changes nothing', async () => {
    const id = await newSnapshot();
    const err = await transitionSnapshot(stack.pool, id, 'BackedUp', { set: { size: 1 }, event: { type: 'SNAPSHOT.BACKUP', description: 'skip' } }).catch((e) => e);
    expect(err).toBeInstanceOf(IllegalSnapshotTransitionError);
    expect(err).toMatchObject({ from: 'Allocated', to: 'BackedUp' });
    expect(await getSnapshot(stack.pool, id)).toMatchObject({ status: 'Allocated', size: null });
    expect(await eventsOf(id)).toEqual([]);
  });

  it('an unknown snapshot is an error', async () => {
    await expect(transitionSnapshot(stack.pool, randomUUID(), 'Creating', { event: { type: 'X', description: 'x' } })).rejects.toThrow(/not found/);
  });

  it('concurrent moves to the same state: exactly one wins, with one event', async () => {
    const id = await newSnapshot();
    const results = await Promise.all(
      Array.from({ length: 8 }, () => transitionSnapshot(stack.pool, id, 'Creating', { event: { type: 'SNAPSHOT.CREATE', description: 'race' } })),
    );
    expect(results.filter((r) => r.changed)).toHaveLength(1);
    expect(await eventsOf(id)).toHaveLength(1);
  });

  it('concurrent competing moves: Error and CreatedOnPrimary from Creating, one wins and the other is refused', async () => {
    const id = await newSnapshot();
    await transitionSnapshot(stack.pool, id, 'Creating', { event: { type: 'SNAPSHOT.CREATE', description: 'creating' } });
    const [toError, toCreated, toBackingUp] = await Promise.allSettled([
      transitionSnapshot(stack.pool, id, 'Error', { set: { last_error: 'boom' }, event: { type: 'SNAPSHOT.CREATE', description: 'failed' } }),
      transitionSnapshot(stack.pool, id, 'CreatedOnPrimary', { event: { type: 'SNAPSHOT.CREATE', description: 'created' } }),
      transitionSnapshot(stack.pool, id, 'BackingUp', { event: { type: 'SNAPSHOT.BACKUP', description: 'backing up' } }),
    ]);
    const final = (await getSnapshot(stack.pool, id))!;
    // Whatever the order, the row went through legal moves only, and each change has exactly one event.
    const changed = [toError, toCreated, toBackingUp].filter((r) => r.status === 'fulfilled' && r.value.changed).length;
    expect(await eventsOf(id)).toHaveLength(1 + changed);
    if (final.status === 'Error') expect(final.lastError).toBe('boom');
    for (const r of [toError, toCreated, toBackingUp]) if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(IllegalSnapshotTransitionError);
    const path = (await eventsOf(id)).map((e) => `${e.details.from}->${e.details.to}`);
    for (const step of path) expect(['Allocated->Creating', 'Creating->Error', 'Creating->CreatedOnPrimary', 'CreatedOnPrimary->BackingUp', 'CreatedOnPrimary->Error', 'BackingUp->Error']).toContain(step);
  });

  describe('createSnapshotOnPrimary (the activity, on real PostgreSQL and qcow2)', () => {
    const tags = (): string[] =>
      ((JSON.parse(execFileSync('qemu-img', ['info', '-U', '--output=json', volumePath], { encoding: 'utf8' })).snapshots ?? []) as Array<{ name: string }>).map((x) => x.name);
    const createOnPrimary = (snapshotId: string) =>
      new MockActivityEnvironment().run(createSnapshotActivities({ pool: stack.pool, drivers: stack.drivers, logger: silentLogger }).createSnapshotOnPrimary, { snapshotId });

    it('a first execution creates exactly one internal snapshot and records the volume size', async () => {
      const id = await newSnapshot();
      expect(await createOnPrimary(id)).toEqual({ sizeBytes: 1024 * 1024 });
      expect(tags().filter((t) => t === id)).toHaveLength(1);
      expect(await getSnapshot(stack.pool, id)).toMatchObject({ status: 'CreatedOnPrimary', size: 1024 * 1024 });
    });

    it('a re-run after an execution that created the snapshot but died before recording it makes no duplicate', async () => {
      const id = await newSnapshot();
      // The earlier execution: moved the row to Creating, ran qemu-img, then crashed.
      await transitionSnapshot(stack.pool, id, 'Creating', { event: { type: 'SNAPSHOT.CREATE', description: 'creating' } });
      execFileSync('qemu-img', ['snapshot', '-c', id, volumePath]);
      expect(await createOnPrimary(id)).toEqual({ sizeBytes: 1024 * 1024 });
      expect(tags().filter((t) => t === id)).toHaveLength(1);
      expect((await getSnapshot(stack.pool, id))?.status).toBe('CreatedOnPrimary');
    });
  });
});
