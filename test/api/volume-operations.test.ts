import { randomUUID } from 'node:crypto';
import { copyFileSync, existsSync, readdirSync, renameSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../observability/logger.js';
import type { StorageDriver } from '../../storage/driver.js';
import { MiB, startApiHarness, waitFor, type ApiHarness } from './harness.js';

/** A promise to wait on and the function that settles it: an ordering barrier, not a timer. */
function barrier(): { wait: Promise<void>; open: () => void } {
  let open!: () => void;
  const wait = new Promise<void>((r) => (open = r));
  return { wait, open };
}

/**
 * Long storage work (volume migrate) runs outside the transaction that holds the VM and volume row locks: VM
 * actions on the same VM answer at once meanwhile, conflicting requests get 409 VOLUME_BUSY, and a volume left
 * in a transitional state by a dead process is reconciled.
 */
describe('volume operations outside row locks', () => {
  let h: ApiHarness;
  let key: string;
  let poolIds: string[];
  let poolPaths: string[];
  let driver: StorageDriver;
  /** While set, a migrate's copy says it began and waits for `release` (as a multi-GiB copy would take long). */
  let held: { began: ReturnType<typeof barrier>; release: ReturnType<typeof barrier> } | null = null;

  const call = (method: string, path: string, body?: unknown) => h.call(method, path, { key, ...(body !== undefined ? { body } : {}) });

  async function createVm(name: string) {
    const res = await call('POST', '/api/v1/vms', { name, hypervisor: 'KVM', rootDiskSizeBytes: MiB, dataDisks: [{ sizeBytes: MiB }] });
    expect(res.status).toBe(201);
    // Host paths are shown to admins only: the VM as the admin sees it.
    return (await h.call('GET', `/api/v1/vms/${res.body.id}`)).body as { id: string; volumes: Array<{ id: string; type: string; path: string; poolId: string }> };
  }

  beforeAll(async () => {
    h = await startApiHarness();
    key = (await h.createUser('volume-ops-user')).key;
    const pools = (await h.call('GET', '/api/v1/storage-pools')).body.filter((p: { hypervisor: string }) => p.hypervisor === 'KVM');
    poolIds = pools.map((p: { id: string }) => p.id);
    poolPaths = pools.map((p: { path: string }) => p.path);
    expect(poolIds.length).toBeGreaterThanOrEqual(2);
    // A long copy, deterministically: the real migrate runs once the test lets it.
    driver = h.stack.drivers.KVM!;
    const migrate = driver.migrateVolume.bind(driver);
    driver.migrateVolume = async (...args) => {
      if (held) {
        held.began.open();
        await held.release.wait;
      }
      return migrate(...args);
    };
  });
  afterAll(async () => {
    await h?.stop();
  });

  it('a VM action on the same VM answers promptly while its disk migrates; conflicting requests get 409 VOLUME_BUSY', async () => {
    const vm = await createVm('migrating-vm');
    const data = vm.volumes.find((v) => v.type === 'DATADISK')!;
    const target = poolIds.find((p) => p !== data.poolId)!;
    held = { began: barrier(), release: barrier() };
    let copied = false;
    const migrating = call('POST', `/api/v1/volumes/${data.id}/migrate`, { poolId: target }).then((r) => ((copied = true), r));
    await held.began.wait;
    expect((await call('GET', `/api/v1/volumes/${data.id}`)).body.state).toBe('Migrating');

    // Answered while the copy is still held: a VM action does not wait behind it.
    const reboot = await call('POST', `/api/v1/vms/${vm.id}/actions`, { action: 'reboot' });
    expect(reboot.status, JSON.stringify(reboot.body)).toBe(200);

    // Conflicting requests are refused at once, not queued behind the copy.
    const resize = await call('POST', `/api/v1/volumes/${data.id}/resize`, { sizeBytes: 2 * MiB });
    expect(resize.status, JSON.stringify(resize.body)).toBe(409);
    expect(resize.body.error.code).toBe('VOLUME_BUSY');
    expect(resize.body.error.details).toMatchObject({ volumeId: data.id, state: 'Migrating' });
    const snap = await call('POST', `/api/v1/volumes/${data.id}/snapshots`, { asyncBackup: true });
    expect(snap.status).toBe(409);
    expect(snap.body.error.code).toBe('VOLUME_BUSY');
    const detach = await call('POST', `/api/v1/vms/${vm.id}/actions`, { action: 'detach-volume', volumeId: data.id });
    expect(detach.status).toBe(409);
    expect(detach.body.error.code).toBe('VOLUME_BUSY');
    const allowed = (await call('GET', `/api/v1/vms/${vm.id}/allowed-actions`)).body.actions;
    expect(allowed.find((a: { action: string }) => a.action === 'reboot').allowed).toBe(true);
    expect(allowed.find((a: { action: string }) => a.action === 'detach-volume').allowed).toBe(false);
    // All of that answered before the copy could end.
    expect(copied).toBe(false);

    held.release.open();
    held = null;
    const done = await migrating;
    expect(done.status, JSON.stringify(done.body)).toBe(200);
    expect(done.body).toMatchObject({ id: data.id, state: 'Ready', poolId: target });
    expect(done.body).not.toHaveProperty('path');
    expect(existsSync((await h.call('GET', `/api/v1/volumes/${data.id}`)).body.path)).toBe(true);
    expect(existsSync(data.path)).toBe(false);
    // Ready again: the resize goes through now.
    expect((await call('POST', `/api/v1/volumes/${data.id}/resize`, { sizeBytes: 2 * MiB })).status).toBe(200);
  });

  it('a failed migrate restores the volume to Ready in its pool and removes the partial copy', async () => {
    const vm = await createVm('failing-migrate-vm');
    const data = vm.volumes.find((v) => v.type === 'DATADISK')!;
    const target = poolPaths[poolIds.indexOf(poolIds.find((p) => p !== data.poolId)!)]!;
    const migrate = driver.migrateVolume;
    driver.migrateVolume = async () => {
      writeFileSync(join(target, `${data.id}.qcow2.partial-00ff`), 'half a copy');
      throw new Error('disk full');
    };
    try {
      const res = await call('POST', `/api/v1/volumes/${data.id}/migrate`, { poolId: poolIds.find((p) => p !== data.poolId) });
      expect(res.status).toBe(500);
      expect(JSON.stringify(res.body)).not.toMatch(/\/tmp|disk full|at /);
    } finally {
      driver.migrateVolume = migrate;
    }
    const after = (await h.call('GET', `/api/v1/volumes/${data.id}`)).body;
    expect(after).toMatchObject({ state: 'Ready', poolId: data.poolId, path: data.path });
    expect(readdirSync(target).filter((n) => n.startsWith(data.id))).toEqual([]);
  });

  describe('reconciling a volume left Migrating by a dead process', () => {
    async function leaveMigrating(heartbeatAgo: string) {
      const vm = await createVm(`stuck-${randomUUID().slice(0, 8)}`);
      const data = vm.volumes.find((v) => v.type === 'DATADISK')!;
      const toPoolId = poolIds.find((p) => p !== data.poolId)!;
      const toPath = join(poolPaths[poolIds.indexOf(toPoolId)]!, basename(data.path));
      const pending = { op: 'migrate', token: randomUUID(), fromPoolId: data.poolId, toPoolId, fromPath: data.path, toPath };
      await h.stack.pool.query(
        `UPDATE volumes SET state = 'Migrating', pending = $2, pending_heartbeat = now() - $3::interval WHERE id = $1`,
        [data.id, JSON.stringify(pending), heartbeatAgo],
      );
      return { vm, data, toPoolId, toPath };
    }
    const reconcile = async () => (await import('../../services/volume-reconcile.js')).reconcileStuckVolumes({ pool: h.stack.pool, drivers: h.stack.drivers, logger: silentLogger }, { staleAfterSeconds: 60 });
    const volume = async (id: string) => (await h.call('GET', `/api/v1/volumes/${id}`)).body;

    it('crash during the copy: back to Ready in the source pool, partial and unpublished copies removed', async () => {
      const { data, toPath } = await leaveMigrating('1 hour');
      writeFileSync(`${toPath}.partial-0a0b`, 'partial');
      copyFileSync(data.path, toPath); // published but the source was never removed: the source wins
      const fresh = await leaveMigrating('1 second'); // a live operation elsewhere: left alone

      const r = await reconcile();
      expect(r.settled).toEqual([expect.objectContaining({ volumeId: data.id, outcome: 'undone', previousState: 'Migrating' })]);
      expect(await volume(data.id)).toMatchObject({ state: 'Ready', path: data.path, poolId: data.poolId });
      expect(existsSync(data.path)).toBe(true);
      expect(readdirSync(dirname(toPath)).filter((n) => n.startsWith(data.id))).toEqual([]);
      expect((await volume(fresh.data.id)).state).toBe('Migrating');
      // Idempotent: nothing left to do.
      expect((await reconcile()).settled).toEqual([]);
      const events = (await call('GET', '/api/v1/events')).body.filter((e: { resourceId: string; type: string }) => e.resourceId === data.id && e.type === 'VOLUME.MIGRATE');
      expect(events.at(-1).description).toMatch(/undone/);
      await h.stack.pool.query(`UPDATE volumes SET state = 'Ready', pending = NULL WHERE id = $1`, [fresh.data.id]);
    });

    it('crash after the copy replaced the source: the migration is finished', async () => {
      const { data, toPoolId, toPath } = await leaveMigrating('1 hour');
      renameSync(data.path, toPath);
      const r = await reconcile();
      expect(r.settled).toEqual([expect.objectContaining({ volumeId: data.id, outcome: 'finished' })]);
      expect(await volume(data.id)).toMatchObject({ state: 'Ready', path: toPath, poolId: toPoolId });
    });

    it('storage GC runs the same reconcile step', async () => {
      const { data } = await leaveMigrating('1 hour');
      const res = await h.call('POST', '/api/v1/storage/gc');
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      await waitFor(async () => (await volume(data.id)).state === 'Ready', 10_000, 'GC to settle the volume');
      expect(await volume(data.id)).toMatchObject({ path: data.path, poolId: data.poolId });
    });
  });
});
