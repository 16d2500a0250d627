import { randomUUID } from 'node:crypto';
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MiB, startApiHarness, waitFor, type ApiHarness } from './harness.js';

interface SseMessage {
  event: string;
  id?: string;
  data: any;
}

/** Reads an SSE response message by message. */
function sseReader(res: Response) {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  const received: SseMessage[] = [];
  async function next(timeoutMs: number): Promise<SseMessage> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const end = buffer.indexOf('\n\n');
      if (end >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const lines = block.split('\n').filter((l) => !l.startsWith(':'));
        if (!lines.length) continue;
        const field = (name: string) => lines.filter((l) => l.startsWith(`${name}: `)).map((l) => l.slice(name.length + 2));
        const msg: SseMessage = { event: field('event')[0] ?? 'message', data: JSON.parse(field('data').join('\n')) };
        const id = field('id')[0];
        if (id !== undefined) msg.id = id;
        received.push(msg);
        return msg;
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timed out waiting for an SSE message');
      const chunk = await Promise.race([reader.read(), new Promise<never>((_, reject) => setTimeout(() => reject(new Error('timed out waiting for an SSE message')), left))]);
      if (chunk.done) throw new Error('stream ended');
      buffer += decoder.decode(chunk.value, { stream: true });
    }
  }
  return {
    received,
    next,
    async until(pred: (m: SseMessage) => boolean, timeoutMs = 10_000): Promise<SseMessage> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const m = await next(Math.max(1, deadline - Date.now()));
        if (pred(m)) return m;
      }
    },
    close: () => reader.cancel(),
  };
}

/** Taking snapshots through the API, and the operations on them: delete, revert, new volume, events. */
describe('snapshots over HTTP', () => {
  let h: ApiHarness;
  let user: { id: string; key: string };
  let vm: { id: string; volumes: Array<{ id: string; type: string; path: string }> };
  let secondary: string;

  const call = (method: string, path: string, body?: unknown, headers?: Record<string, string>) =>
    h.call(method, path, { key: user.key, ...(body !== undefined ? { body } : {}), ...(headers ? { headers } : {}) });
  const snapshot = (volumeId: string, body: Record<string, unknown> = {}, headers?: Record<string, string>) =>
    call('POST', `/api/v1/volumes/${volumeId}/snapshots`, body, headers);
  const getSnapshot = async (id: string) => (await call('GET', `/api/v1/snapshots/${id}`)).body;
  /** Host paths (volumes' path, store refs' installPath) are shown to admins only: read them with the admin key. */
  const asAdmin = async (path: string) => (await h.call('GET', path)).body;

  beforeAll(async () => {
    h = await startApiHarness();
    user = await h.createUser('snapper');
    secondary = (await h.stack.pool.query('SELECT path FROM image_stores LIMIT 1')).rows[0].path;
    const made = (await call('POST', '/api/v1/vms', { name: 'app-1', hypervisor: 'KVM', rootDiskSizeBytes: 2 * MiB, dataDisks: [{ sizeBytes: MiB }] })).body;
    vm = await asAdmin(`/api/v1/vms/${made.id}`);
  });
  afterAll(async () => {
    await h?.stop();
  });

  it('an async snapshot answers 201 at CreatedOnPrimary/BackingUp, and is later BackedUp with a checksummed backup', async () => {
    const disk = vm.volumes[1]!;
    const res = await snapshot(disk.id, { name: 'nightly', asyncBackup: true });
    expect(res.status).toBe(201);
    expect(['CreatedOnPrimary', 'BackingUp']).toContain(res.body.state);
    expect(res.body).toMatchObject({ name: 'nightly', volumeId: disk.id, vmId: vm.id, accountId: user.id, asyncBackup: true, workflowId: `snapshot-${res.body.id}` });
    expect(Object.keys(res.body).sort()).toEqual(
      ['id', 'name', 'volumeId', 'vmId', 'accountId', 'state', 'asyncBackup', 'createdAt', 'updatedAt', 'workflowId', 'backup', 'storeRefs'].sort(),
    );
    expect(Object.keys(res.body.backup).sort()).toEqual(
      ['attempts', 'maxAttempts', 'retryIntervalSeconds', 'bytesDone', 'bytesTotal', 'lastError', 'nextAttemptAt', 'kind', 'parentSnapshotId', 'bytesWritten', 'chainLength'].sort(),
    );
    expect(res.body.backup).toMatchObject({ maxAttempts: 3, retryIntervalSeconds: 300, bytesTotal: MiB });
    expect(res.body.storeRefs).toContainEqual(expect.objectContaining({ role: 'Primary', state: 'Ready' }));
    expect(res.body.storeRefs.some((r: object) => 'installPath' in r)).toBe(false);
    expect((await asAdmin(`/api/v1/snapshots/${res.body.id}`)).storeRefs).toContainEqual(
      expect.objectContaining({ role: 'Primary', installPath: `${disk.path}@${res.body.id}` }),
    );

    const done = await waitFor(async () => {
      const s = await asAdmin(`/api/v1/snapshots/${res.body.id}`);
      return s.state === 'BackedUp' ? s : undefined;
    }, 30_000, 'BackedUp');
    const image = done.storeRefs.find((r: { role: string }) => r.role === 'Image');
    expect(image).toMatchObject({ state: 'Ready', installPath: `snapshots/${user.id}/${disk.id}/${res.body.id}.qcow2` });
    expect(image.checksum).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(image.sizeBytes).toBeGreaterThan(0);
    expect(existsSync(join(secondary, image.installPath))).toBe(true);
    expect(done.backup).toMatchObject({ attempts: 1, bytesDone: MiB, bytesTotal: MiB, lastError: null });
    // The volume's first backup is a full one (docs/design.md §14).
    expect(done.backup).toMatchObject({ kind: 'full', parentSnapshotId: null, chainLength: 1, bytesWritten: image.sizeBytes });
    expect(image).toMatchObject({ parentSnapshotId: null, chainLength: 1 });
  });

  it('a synchronous snapshot (the default) answers 201 once BackedUp', async () => {
    const res = await snapshot(vm.volumes[0]!.id);
    expect(res.status).toBe(201);
    expect(res.body.state).toBe('BackedUp');
    expect(res.body.asyncBackup).toBe(false);
    expect(res.body.storeRefs.map((r: { role: string }) => r.role).sort()).toEqual(['Image', 'Primary']);
  });

  it('an Idempotency-Key makes retries return the same snapshot (201, then 200), also when they race', async () => {
    const disk = vm.volumes[1]!;
    const first = await snapshot(disk.id, { asyncBackup: true }, { 'Idempotency-Key': 'req-1' });
    const second = await snapshot(disk.id, { asyncBackup: true }, { 'Idempotency-Key': 'req-1' });
    expect(first.status).toBe(201);
    expect(second.status).toBe(200);
    expect(second.body.id).toBe(first.body.id);

    const racing = await Promise.all([1, 2, 3].map(() => snapshot(disk.id, { asyncBackup: true }, { 'Idempotency-Key': 'req-2' })));
    expect(new Set(racing.map((r) => r.body.id)).size).toBe(1);
    expect(racing.map((r) => r.status).sort()).toEqual([200, 200, 201]);
    const { rows } = await h.stack.pool.query(`SELECT count(*)::int AS n FROM snapshots WHERE idempotency_key IN ('req-1', 'req-2')`);
    expect(rows[0].n).toBe(2);

    const elsewhere = await snapshot(vm.volumes[0]!.id, {}, { 'Idempotency-Key': 'req-1' });
    expect(elsewhere.status).toBe(409);
    expect(elsewhere.body.error.code).toBe('IDEMPOTENCY_KEY_REUSED');
    await waitFor(async () => (await getSnapshot(racing[0]!.body.id)).state === 'BackedUp', 30_000, 'BackedUp');
  });

  it('lists snapshots by volume and state', async () => {
    const disk = vm.volumes[1]!;
    const byVolume = (await call('GET', `/api/v1/snapshots?volumeId=${disk.id}`)).body;
    expect(byVolume.length).toBeGreaterThanOrEqual(3);
    expect(byVolume.every((s: { volumeId: string }) => s.volumeId === disk.id)).toBe(true);
    const backedUp = (await call('GET', `/api/v1/snapshots?volumeId=${disk.id}&state=BackedUp`)).body;
    expect(backedUp.length).toBeGreaterThan(0);
    expect(backedUp.every((s: { state: string }) => s.state === 'BackedUp')).toBe(true);
  });

  it('filters by vmId and q together with keyset paging (limit, after, X-Next-Cursor)', async () => {
    const all = (await call('GET', `/api/v1/snapshots?vmId=${vm.id}`)).body;
    expect(all.length).toBeGreaterThanOrEqual(3);
    expect(all.every((s: { vmId: string }) => s.vmId === vm.id)).toBe(true);
    // Paged one at a time: the pages put together are the whole list, and the cursor keeps the filter.
    const paged: string[] = [];
    let next: string | null = null;
    for (let i = 0; i < all.length + 1; i++) {
      const res = await h.app.request(`/api/v1/snapshots?vmId=${vm.id}&limit=1${next ? `&after=${next}` : ''}`, { headers: { authorization: `Bearer ${user.key}` } });
      expect(res.status).toBe(200);
      paged.push(...((await res.json()) as Array<{ id: string }>).map((s) => s.id));
      next = res.headers.get('X-Next-Cursor');
      if (!next) break;
      expect(res.headers.get('Link')).toContain(`vmId=${vm.id}`);
    }
    expect(paged).toEqual(all.map((s: { id: string }) => s.id));
    const named = (await call('GET', `/api/v1/snapshots?vmId=${vm.id}&q=NIGHT`)).body;
    expect(named.map((s: { name: string }) => s.name)).toEqual(['nightly']);
    expect((await call('GET', `/api/v1/snapshots?q=${all[0].id}&limit=1`)).body.map((s: { id: string }) => s.id)).toEqual([all[0].id]);
    expect((await call('GET', `/api/v1/snapshots?vmId=${randomUUID()}`)).body).toEqual([]);
  });

  it('creates a volume from a backup, reverts a stopped VM\'s volume, and deletes a snapshot with its files', async () => {
    const root = vm.volumes[0]!;
    const s = (await snapshot(root.id, { name: 'golden' })).body;
    expect(s.state).toBe('BackedUp');

    const made = await call('POST', `/api/v1/snapshots/${s.id}/volumes`, { name: 'restored' });
    expect(made.status).toBe(201);
    expect(made.body).toMatchObject({ name: 'restored', type: 'DATADISK', vmId: null, state: 'Ready', sizeBytes: 2 * MiB });
    expect(made.body).not.toHaveProperty('path');
    expect(existsSync((await asAdmin(`/api/v1/volumes/${made.body.id}`)).path)).toBe(true);

    const running = await call('POST', `/api/v1/snapshots/${s.id}/revert`);
    expect(running.status).toBe(409);
    expect(running.body.error.code).toBe('INVALID_STATE');
    expect((await call('POST', `/api/v1/vms/${vm.id}/actions`, { action: 'stop' })).status).toBe(200);
    const reverted = await call('POST', `/api/v1/snapshots/${s.id}/revert`);
    expect(reverted.status).toBe(200);
    expect(reverted.body).toMatchObject({ id: root.id, sizeBytes: 2 * MiB });
    expect((await call('POST', `/api/v1/vms/${vm.id}/actions`, { action: 'start' })).status).toBe(200);

    const image = (await asAdmin(`/api/v1/snapshots/${s.id}`)).storeRefs.find((r: { role: string }) => r.role === 'Image');
    const deleted = await call('DELETE', `/api/v1/snapshots/${s.id}`);
    expect(deleted.status).toBe(200);
    expect(deleted.body.state).toBe('Destroyed');
    expect(deleted.body.storeRefs.every((r: { state: string }) => r.state === 'Destroyed')).toBe(true);
    expect(existsSync(join(secondary, image.installPath))).toBe(false);
    expect(await h.stack.drivers.KVM!.hasSnapshot(root.path, s.id)).toBe(false);
    const { rows } = await h.stack.pool.query(`SELECT type, details->>'to' AS "to" FROM events WHERE resource_id = $1 AND type = 'SNAPSHOT.DELETE' ORDER BY id`, [s.id]);
    expect(rows.map((r) => r.to)).toEqual(['Destroying', 'Destroyed']);

    const twice = await call('DELETE', `/api/v1/snapshots/${s.id}`);
    expect(twice.status).toBe(409);
    expect(twice.body.error.code).toBe('INVALID_STATE');
    expect((await call('GET', '/api/v1/snapshots')).body.map((x: { id: string }) => x.id)).not.toContain(s.id);
    expect((await call('GET', '/api/v1/snapshots?state=Destroyed')).body.map((x: { id: string }) => x.id)).toContain(s.id);
  });

  describe('failures', () => {
    beforeAll(async () => {
      await h.setConfig('backup.max.attempts', 1);
      await h.breakImageStore();
    });
    afterAll(async () => {
      await h.restoreImageStore();
      await h.setConfig('backup.max.attempts', 3);
    });

    it('a synchronous snapshot whose backup fails answers 409 SNAPSHOT_BACKUP_FAILED; the Error snapshot can be deleted', async () => {
      const res = await snapshot(vm.volumes[1]!.id, { name: 'doomed' });
      expect(res.status).toBe(409);
      expect(res.body.error.code).toBe('SNAPSHOT_BACKUP_FAILED');
      const id = res.body.error.details.snapshotId;
      const s = await getSnapshot(id);
      expect(s.state).toBe('Error');
      expect(s.backup.lastError).toBeTruthy();
      expect(s.storeRefs.find((r: { role: string }) => r.role === 'Primary').state).toBe('Destroyed');
      const deleted = await call('DELETE', `/api/v1/snapshots/${id}`);
      expect(deleted.status).toBe(200);
      expect(deleted.body.state).toBe('Destroyed');
    });

    it('an async snapshot whose backup fails answers 201, then goes to Error; a replay shows that', async () => {
      const res = await snapshot(vm.volumes[1]!.id, { asyncBackup: true }, { 'Idempotency-Key': 'async-fail' });
      expect(res.status).toBe(201);
      await waitFor(async () => (await getSnapshot(res.body.id)).state === 'Error', 30_000, 'Error');
      const replay = await snapshot(vm.volumes[1]!.id, { asyncBackup: true }, { 'Idempotency-Key': 'async-fail' });
      expect(replay.status).toBe(200);
      expect(replay.body).toMatchObject({ id: res.body.id, state: 'Error' });
    });

    it('a failed creation on primary storage answers 409 SNAPSHOT_CREATION_FAILED, no stack trace', async () => {
      const lost = (await call('POST', '/api/v1/volumes', { name: 'lost', sizeBytes: MiB })).body;
      rmSync((await asAdmin(`/api/v1/volumes/${lost.id}`)).path);
      const res = await snapshot(lost.id, { asyncBackup: true });
      expect(res.status).toBe(409);
      expect(res.body.error.code).toBe('SNAPSHOT_CREATION_FAILED');
      expect(res.body.error.message).toMatch(/primary storage/);
      expect(JSON.stringify(res.body)).not.toMatch(/\.ts:\d+/);
      expect((await getSnapshot(res.body.error.details.snapshotId)).state).toBe('Error');
    });
  });

  describe('events', () => {
    it('lists the account\'s events after a cursor', async () => {
      const all = (await call('GET', '/api/v1/events?limit=1000')).body;
      expect(all.length).toBeGreaterThan(5);
      expect(all.every((e: { accountId: string }) => e.accountId === user.id)).toBe(true);
      const ids = all.map((e: { id: number }) => e.id);
      expect([...ids].sort((a: number, b: number) => a - b)).toEqual(ids);
      const after = (await call('GET', `/api/v1/events?since=${ids[2]}&limit=2`)).body;
      expect(after.map((e: { id: number }) => e.id)).toEqual(ids.slice(3, 5));
    });

    it('streams new events and backup progress as server-sent events, only the account\'s own, resumable', async () => {
      const other = await h.createUser('other');
      const lastBefore = (await call('GET', '/api/v1/events?limit=1000')).body.at(-1).id as number;
      const res = await h.app.request('/api/v1/events/stream', { headers: { authorization: `Bearer ${user.key}` } });
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/text\/event-stream/);
      const stream = sseReader(res);
      try {
        await stream.until((m) => m.event === 'ready');
        await h.call('POST', '/api/v1/volumes', { key: other.key, body: { name: 'not-yours', sizeBytes: MiB } });
        const mine = (await call('POST', '/api/v1/volumes', { name: 'streamed', sizeBytes: MiB })).body;
        const created = await stream.until((m) => m.event === 'message' && m.data.type === 'VOLUME.CREATE');
        expect(created.data.resourceId).toBe(mine.id);
        expect(created.id).toBe(String(created.data.id));

        // A backup held in BackingUp shows up as progress.
        await h.setConfig('backup.retry.interval', 3600);
        await h.breakImageStore();
        const held = (await snapshot(mine.id, { asyncBackup: true })).body;
        // Once the first attempt failed: attempt 1 of N, why, and when the next one starts.
        const progress = await stream.until((m) => m.event === 'progress' && m.data.snapshotId === held.id && m.data.lastError !== null);
        expect(progress.data).toMatchObject({ volumeId: mine.id, state: 'BackingUp', attempts: 1, maxAttempts: 3, bytesTotal: MiB });
        expect(progress.data.lastError).toMatch(/image store/);
        expect(Date.parse(progress.data.nextAttemptAt)).toBeGreaterThan(Date.now() + 3000_000);
        expect(stream.received.every((m) => m.event !== 'message' || m.data.accountId === user.id)).toBe(true);
      } finally {
        await stream.close();
      }

      // Resuming with Last-Event-ID replays what came after it before going live.
      const resumed = sseReader(await h.app.request('/api/v1/events/stream', { headers: { authorization: `Bearer ${user.key}`, 'Last-Event-ID': String(lastBefore) } }));
      try {
        const first = await resumed.next(5000);
        expect(first.event).toBe('message');
        expect(Number(first.id)).toBeGreaterThan(lastBefore);
        const ready = await resumed.until((m) => m.event === 'ready');
        const replayed = resumed.received.filter((m) => m.event === 'message');
        expect(replayed.some((m) => m.data.type === 'VOLUME.CREATE')).toBe(true);
        expect(replayed.every((m) => m.data.accountId === user.id)).toBe(true);
        expect(ready.data.lastEventId).toBe(Number(replayed.at(-1)!.id));
      } finally {
        await resumed.close();
      }
      // Both streams closed: the shared LISTEN connection goes away with its last subscriber.
      await waitFor(async () => {
        const { rows } = await h.stack.pool.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE query LIKE 'LISTEN %'`);
        return rows[0].n === 0;
      }, 5000, 'the LISTEN connection to close');
    });
  });
});
