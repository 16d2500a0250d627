import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mayRunQuery, statusQuery } from '../../workflows/definitions.js';
import { MiB, startApiHarness, waitFor, type ApiHarness } from './harness.js';

/**
 * The parallel-operation policy of docs/design.md §6 through the HTTP API. Backups are held in BackingUp
 * deterministically: the image store points under a regular file, so the first attempt fails at once and the
 * retry waits an hour (backup.retry.interval = 3600).
 */
describe('parallel operations while a snapshot backs up', () => {
  let h: ApiHarness;
  let key: string;
  let isoIds: string[];
  let hostIds: string[];
  let poolIds: string[];
  let offeringIds: string[];

  const call = (method: string, path: string, body?: unknown) => h.call(method, path, { key, ...(body !== undefined ? { body } : {}) });
  const act = (vmId: string, body: Record<string, unknown>) => call('POST', `/api/v1/vms/${vmId}/actions`, body);

  async function createVm(name: string, dataDisks = 0) {
    const res = await call('POST', '/api/v1/vms', {
      name,
      hypervisor: 'KVM',
      rootDiskSizeBytes: MiB,
      dataDisks: Array.from({ length: dataDisks }, () => ({ sizeBytes: MiB })),
    });
    expect(res.status).toBe(201);
    // Host paths are shown to admins only: the VM as the admin sees it.
    return (await h.call('GET', `/api/v1/vms/${res.body.id}`)).body as { id: string; hostId: string; volumes: Array<{ id: string; type: string; path: string; sizeBytes: number; poolId: string }> };
  }

  /** Takes an async snapshot and waits until its first backup attempt has failed: it now waits in BackingUp. */
  async function holdBackup(volumeId: string): Promise<string> {
    const res = await call('POST', `/api/v1/volumes/${volumeId}/snapshots`, { asyncBackup: true });
    expect(res.status).toBe(201);
    expect(['CreatedOnPrimary', 'BackingUp']).toContain(res.body.state);
    await waitFor(async () => {
      const s = (await call('GET', `/api/v1/snapshots/${res.body.id}`)).body;
      return s.state === 'BackingUp' && s.backup.lastError !== null;
    }, 20_000, 'the first backup attempt to fail');
    return res.body.id;
  }

  function expectRefused(res: { status: number; body: any }, snapshotIds: string[], volumeId: string, what: string) {
    expect(res.status, `${what}: ${JSON.stringify(res.body)}`).toBe(409);
    expect(res.body.error.code, what).toBe('OPERATION_NOT_ALLOWED_DURING_BACKUP');
    expect(res.body.error.message, what).toMatch(/not allowed while snapshot/);
    expect(snapshotIds, what).toContain(res.body.error.details.snapshotId);
    expect(res.body.error.details.volumeId, what).toBe(volumeId);
  }

  function expectDone(res: { status: number; body: any }, what: string, status = 200) {
    expect(res.status, `${what}: ${JSON.stringify(res.body)}`).toBe(status);
  }

  async function allowedActions(vmId: string): Promise<Record<string, boolean>> {
    const res = await call('GET', `/api/v1/vms/${vmId}/allowed-actions`);
    expect(res.status).toBe(200);
    return Object.fromEntries(res.body.actions.map((a: { action: string; allowed: boolean }) => [a.action, a.allowed]));
  }

  beforeAll(async () => {
    h = await startApiHarness();
    key = (await h.createUser('policy-user')).key;
    await h.setConfig('backup.retry.interval', 3600);
    await h.breakImageStore();
    const ids = async (path: string) => (await call('GET', path)).body.map((r: { id: string }) => r.id);
    isoIds = await ids('/api/v1/isos');
    hostIds = await ids('/api/v1/hosts');
    poolIds = await ids('/api/v1/storage-pools');
    offeringIds = await ids('/api/v1/service-offerings');
  });
  afterAll(async () => {
    await h?.stop();
  });

  it('DATADISK backing up: the seed list runs, everything else on the VM, the disk and the snapshot is refused', async () => {
    const vm = await createVm('dd-vm', 2);
    const [root, disk, otherDisk] = vm.volumes;
    const spare = (await call('POST', '/api/v1/volumes', { name: 'spare', sizeBytes: MiB })).body;
    const unrelated = (await call('POST', '/api/v1/volumes', { name: 'unrelated', sizeBytes: MiB })).body;
    const s = await holdBackup(disk!.id);

    expect(await allowedActions(vm.id)).toEqual({
      start: true,
      stop: true,
      reboot: true,
      destroy: true,
      reinstall: true,
      'attach-iso': true,
      'detach-iso': false,
      'attach-volume': true,
      'detach-volume': false, // answered for the disk that is backing up
      'change-service-offering': true,
      migrate: false,
    });

    // Allowed: the seed's list.
    expectDone(await call('POST', `/api/v1/volumes/${unrelated.id}/snapshots`, { asyncBackup: true }), 'snapshot another volume', 201);
    expectDone(await act(vm.id, { action: 'stop' }), 'stop');
    expectDone(await act(vm.id, { action: 'start' }), 'start');
    expectDone(await act(vm.id, { action: 'reboot' }), 'reboot');
    expectDone(await act(vm.id, { action: 'attach-iso', isoId: isoIds[0] }), 'attach ISO');
    expectDone(await act(vm.id, { action: 'attach-volume', volumeId: spare.id }), 'attach a disk');
    expectDone(await act(vm.id, { action: 'change-service-offering', serviceOfferingId: offeringIds[1] }), 'change service offering');
    expectDone(await act(vm.id, { action: 'detach-volume', volumeId: otherDisk!.id }), 'detach another disk');

    // Refused: everything else on M or V, and anything on S.
    expectRefused(await act(vm.id, { action: 'detach-volume', volumeId: disk!.id }), [s], disk!.id, 'detach V');
    expectRefused(await act(vm.id, { action: 'migrate', hostId: hostIds.find((id) => id !== vm.hostId) }), [s], disk!.id, 'migrate VM');
    expectRefused(await act(vm.id, { action: 'detach-iso' }), [s], disk!.id, 'detach ISO');
    expectRefused(await call('POST', `/api/v1/volumes/${disk!.id}/resize`, { sizeBytes: 2 * MiB }), [s], disk!.id, 'resize V');
    expectRefused(await call('POST', `/api/v1/volumes/${disk!.id}/migrate`, { poolId: poolIds[1] }), [s], disk!.id, 'migrate V');
    expectRefused(await call('DELETE', `/api/v1/volumes/${disk!.id}`), [s], disk!.id, 'delete V');
    expectRefused(await call('DELETE', `/api/v1/snapshots/${s}`), [s], disk!.id, 'delete S');
    expectRefused(await call('POST', `/api/v1/snapshots/${s}/revert`), [s], disk!.id, 'revert S');
    expectRefused(await call('POST', `/api/v1/snapshots/${s}/volumes`, {}), [s], disk!.id, 'volume from S');

    // Refusals changed nothing, on disk or in the database.
    const v = (await h.call('GET', `/api/v1/volumes/${disk!.id}`)).body;
    expect(v).toMatchObject({ sizeBytes: MiB, poolId: disk!.poolId, path: disk!.path, vmId: vm.id, state: 'Ready' });
    expect(existsSync(disk!.path)).toBe(true);
    expect((await call('GET', `/api/v1/vms/${vm.id}`)).body).toMatchObject({ hostId: vm.hostId, isoId: isoIds[0] });
    expect((await call('GET', `/api/v1/snapshots/${s}`)).body.state).toBe('BackingUp');

    // Snapshot V again: allowed too. Then the destructive ones that a DATADISK backup allows.
    const again = await call('POST', `/api/v1/volumes/${disk!.id}/snapshots`, { asyncBackup: true });
    expectDone(again, 'snapshot V again', 201);
    expectDone(await act(vm.id, { action: 'reinstall' }), 'reinstall');
    expect(existsSync(root!.path)).toBe(false);
    const destroyed = await act(vm.id, { action: 'destroy' });
    expectDone(destroyed, 'destroy');
    // V was detached, not deleted: its backups can go on.
    expect((await call('GET', `/api/v1/volumes/${disk!.id}`)).body).toMatchObject({ vmId: null, state: 'Ready' });
    expect(existsSync(disk!.path)).toBe(true);
  });

  it('ROOT backing up: destroy and reinstall are refused too, detaching another disk is not', async () => {
    const vm = await createVm('root-vm', 1);
    const [root, disk] = vm.volumes;
    const spare = (await call('POST', '/api/v1/volumes', { name: 'spare-2', sizeBytes: MiB })).body;
    expectDone(await act(vm.id, { action: 'attach-iso', isoId: isoIds[0] }), 'attach ISO before');
    const s = await holdBackup(root!.id);

    expect(await allowedActions(vm.id)).toEqual({
      start: true,
      stop: true,
      reboot: true,
      destroy: false,
      reinstall: false,
      'attach-iso': true,
      'detach-iso': false,
      'attach-volume': true,
      'detach-volume': false,
      'change-service-offering': true,
      migrate: false,
    });

    expectRefused(await act(vm.id, { action: 'destroy' }), [s], root!.id, 'destroy');
    expectRefused(await act(vm.id, { action: 'reinstall' }), [s], root!.id, 'reinstall');
    expectRefused(await act(vm.id, { action: 'migrate', hostId: hostIds.find((id) => id !== vm.hostId) }), [s], root!.id, 'migrate VM');
    expectRefused(await act(vm.id, { action: 'detach-iso' }), [s], root!.id, 'detach ISO');
    expectRefused(await act(vm.id, { action: 'detach-volume', volumeId: root!.id }), [s], root!.id, 'detach V');
    expectRefused(await call('POST', `/api/v1/volumes/${root!.id}/resize`, { sizeBytes: 2 * MiB }), [s], root!.id, 'resize V');
    expectRefused(await call('POST', `/api/v1/volumes/${root!.id}/migrate`, { poolId: poolIds[1] }), [s], root!.id, 'migrate V');
    expectRefused(await call('DELETE', `/api/v1/volumes/${root!.id}`), [s], root!.id, 'delete V');
    expectRefused(await call('DELETE', `/api/v1/snapshots/${s}`), [s], root!.id, 'delete S');
    expectRefused(await call('POST', `/api/v1/snapshots/${s}/revert`), [s], root!.id, 'revert S');
    expectRefused(await call('POST', `/api/v1/snapshots/${s}/volumes`, { name: 'from-s' }), [s], root!.id, 'volume from S');

    expectDone(await act(vm.id, { action: 'stop' }), 'stop');
    expectDone(await act(vm.id, { action: 'start' }), 'start');
    expectDone(await act(vm.id, { action: 'reboot' }), 'reboot');
    expectDone(await act(vm.id, { action: 'attach-volume', volumeId: spare.id }), 'attach a disk');
    expectDone(await act(vm.id, { action: 'change-service-offering', serviceOfferingId: offeringIds[2] }), 'change service offering');
    expectDone(await act(vm.id, { action: 'detach-volume', volumeId: disk!.id }), 'detach another disk');
    expectDone(await call('POST', `/api/v1/volumes/${root!.id}/snapshots`, { asyncBackup: true }), 'snapshot V again', 201);

    const after = (await h.call('GET', `/api/v1/vms/${vm.id}`)).body;
    expect(after).toMatchObject({ state: 'Running', hostId: vm.hostId, isoId: isoIds[0] });
    expect(after.volumes.find((v: { type: string }) => v.type === 'ROOT')).toMatchObject({ id: root!.id, sizeBytes: MiB, path: root!.path });
    expect(existsSync(root!.path)).toBe(true);
  });

  it('a data disk attached to a VM mid-backup: the API decides from the live attachment, the query for the one at request time', async () => {
    const vm = await createVm('late-attach-vm');
    const disk = (await call('POST', '/api/v1/volumes', { name: 'late-attach', sizeBytes: MiB })).body;
    const s = await holdBackup(disk.id);
    expectDone(await act(vm.id, { action: 'attach-volume', volumeId: disk.id }), 'attach the backing-up disk');

    // The API (the authority): the disk is on the VM now, and it is backing up, so it may not be detached.
    expect((await allowedActions(vm.id))['detach-volume']).toBe(false);
    expectRefused(await act(vm.id, { action: 'detach-volume', volumeId: disk.id }), [s], disk.id, 'detach the disk attached mid-backup');

    // The workflow's queries say whose attachment they answer for: none (the disk was detached when requested).
    const { workflowId } = (await call('GET', `/api/v1/snapshots/${s}`)).body;
    const handle = h.stack.client.workflow.getHandle(workflowId);
    expect(await handle.query(statusQuery)).toMatchObject({ snapshotId: s, state: 'BackingUp', vmId: null, vmActions: null });
    expect(await handle.query(mayRunQuery, { kind: 'vm', action: 'detach-volume', vmId: vm.id, volumeId: disk.id })).toEqual({ allowed: true });
    // For an operation on the disk itself both answer the same.
    expect((await handle.query(mayRunQuery, { kind: 'volume', action: 'resize', volumeId: disk.id })).allowed).toBe(false);
  });

  it('checking and acting do not race: a forbidden operation either ran before the snapshot or got 409', async () => {
    for (let round = 0; round < 6; round++) {
      const vm = await createVm(`race-${round}`);
      const root = vm.volumes[0]!;
      expectDone(await act(vm.id, { action: 'attach-iso', isoId: isoIds[1] }), 'attach ISO');
      const otherHost = hostIds.find((id) => id !== vm.hostId)!;
      const ops = {
        resize: () => call('POST', `/api/v1/volumes/${root.id}/resize`, { sizeBytes: 2 * MiB }),
        migrateVolume: () => call('POST', `/api/v1/volumes/${root.id}/migrate`, { poolId: poolIds[1] }),
        migrateVm: () => act(vm.id, { action: 'migrate', hostId: otherHost }),
        detachIso: () => act(vm.id, { action: 'detach-iso' }),
        destroy: () => act(vm.id, { action: 'destroy' }),
      };
      const eventTypes: Record<keyof typeof ops, string> = {
        resize: 'VOLUME.RESIZE',
        migrateVolume: 'VOLUME.MIGRATE',
        migrateVm: 'VM.MIGRATE',
        detachIso: 'ISO.DETACH',
        destroy: 'VM.DESTROY',
      };
      // Fire everything at once, in a different order each round. Destroy, when it wins, leaves nothing to
      // snapshot, so it joins only every other round.
      const names = (Object.keys(ops) as Array<keyof typeof ops>).filter((n) => n !== 'destroy' || round % 2 === 1);
      const order = [...names.map((n) => n as string), 'snapshot'].sort(() => Math.random() - 0.5);
      const results = await Promise.all(
        order.map((n) => (n === 'snapshot' ? call('POST', `/api/v1/volumes/${root.id}/snapshots`, { asyncBackup: true }) : ops[n as keyof typeof ops]())),
      );
      const byName = Object.fromEntries(order.map((n, i) => [n, results[i]!]));
      const snap = byName.snapshot!;
      const { rows: events } = await h.stack.pool.query<{ id: number; type: string; resource_id: string; details: Record<string, unknown> }>(
        'SELECT id, type, resource_id, details FROM events WHERE resource_id = ANY($1::text[]) ORDER BY id',
        [[vm.id, root.id, ...(snap.status === 201 ? [snap.body.id] : [])]],
      );
      const destroyWon = byName.destroy?.status === 200;

      if (snap.status === 201) {
        const snapshotCreated = events.find((e) => e.type === 'SNAPSHOT.CREATE' && e.resource_id === snap.body.id)!.id;
        for (const name of names) {
          const res = byName[name]!;
          if (res.status === 200) {
            // It ran: then strictly before the snapshot was recorded, under the same locks.
            const ran = events.find((e) => e.type === eventTypes[name])!;
            expect(ran, `${name} ran but left no event`).toBeDefined();
            expect(ran.id, `round ${round}: ${name} succeeded after the snapshot was taken`).toBeLessThan(snapshotCreated);
          } else {
            expect(res.status, `round ${round}: ${name} -> ${JSON.stringify(res.body)}`).toBe(409);
          }
        }
        // The snapshot saw the state the earlier operations left.
        const s = (await call('GET', `/api/v1/snapshots/${snap.body.id}`)).body;
        expect(s.backup.bytesTotal).toBe(byName.resize!.status === 200 ? 2 * MiB : MiB);
        const primary = s.storeRefs.find((r: { role: string }) => r.role === 'Primary');
        expect(primary.storeId).toBe(byName.migrateVolume!.status === 200 ? poolIds[1] : poolIds[0]);
        expect(destroyWon).toBe(false);
      } else {
        // No snapshot: because destroy got there first and took the ROOT volume with it, or because a resize or
        // migrate of the volume was running (Resizing/Migrating: 409 VOLUME_BUSY at once instead of a wait).
        const busy = snap.body?.error?.code === 'VOLUME_BUSY';
        expect(destroyWon || busy, `round ${round}: snapshot failed with ${JSON.stringify(snap.body)}`).toBe(true);
        if (busy) expect(byName.resize!.status === 200 || byName.migrateVolume!.status === 200, `round ${round}: VOLUME_BUSY with no resize or migrate done`).toBe(true);
        expect([404, 409]).toContain(snap.status);
        for (const name of names) {
          const res = byName[name]!;
          expect(res.body?.error?.code, `round ${round}: ${name} refused by the policy with no snapshot in flight`).not.toBe('OPERATION_NOT_ALLOWED_DURING_BACKUP');
        }
      }
      // Whatever happened, no policy-relevant change was recorded after the snapshot.
      const volume = (await h.call('GET', `/api/v1/volumes/${root.id}`)).body;
      if (snap.status === 201) expect(existsSync(volume.path)).toBe(true);
    }
  });
});
