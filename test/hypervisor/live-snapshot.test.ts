import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { domainName } from '../../compute/domain-xml.js';
import { MiB, startApiHarness, waitFor, type ApiHarness } from '../api/harness.js';
import { verifyWorkload } from '../support/guest-workload.js';
import { requireLibvirt, virsh } from '../support/hypervisor.js';

const exec = promisify(execFile);
const snapshotTags = async (file: string) =>
  ((JSON.parse((await exec('qemu-img', ['info', '-U', '--output=json', file])).stdout).snapshots ?? []) as Array<{ name: string }>).map((s) => s.name);

/**
 * Snapshots of a running VM's disk (the hypervisor tier): its QEMU holds the image's write lock, so the
 * snapshot is taken and deleted by that QEMU (QMP), while the guest runs on, and backed up from the image with
 * shared access. The backup holds exactly what the disk held; the VM never stops.
 */
describe('snapshots of a running VM on libvirt', () => {
  let h: ApiHarness;
  const call = (method: string, p: string, body?: unknown) => h.call(method, p, body === undefined ? {} : { body });

  beforeAll(async () => {
    requireLibvirt();
    // The test guest boots with its workload on: it writes checksummed, sequence-numbered blocks to vdb.
    // Backups paced at 1 MiB/s: a 12 MiB disk's copy (~12 s) outlasts a stop, a start and a kill of its VM.
    h = await startApiHarness({
      env: { KVM_COMPUTE: 'libvirt', VM_ACCELERATOR: 'qemu', VM_GUEST_WORKLOAD: 'on', VM_STOP_TIMEOUT_SECONDS: '2', VM_POWER_SYNC_SECONDS: '0', BACKUP_RATE_LIMIT_BYTES_PER_SEC: String(MiB) },
    });
  }, 120_000);
  afterAll(async () => {
    await h?.stop();
  });
  /** Waits until the VM's guest reports its workload writing (on its console, through the API). */
  const guestWriting = (vmId: string) =>
    waitFor(async () => {
      const tail = (await call('GET', `/api/v1/vms/${vmId}/console?lines=200`)).body as { lines: string[] };
      return tail.lines.some((l) => l.includes('volsnap-guest: wrote seq=')) ? true : undefined;
    }, 90_000, 'the guest workload to write');

  it('takes, backs up, restores from and deletes a snapshot of a running VM’s data disk, with the VM running throughout', async () => {
    const created = await call('POST', '/api/v1/vms', { name: 'live', hypervisor: 'KVM', rootDiskSizeBytes: 16 * MiB, dataDisks: [{ sizeBytes: 16 * MiB }], start: false });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const vm = created.body;
    const data = vm.volumes.find((v: { type: string }) => v.type === 'DATADISK');
    // What the disk holds before the VM runs (no QEMU holds it yet), away from the guest workload's region (1 MiB).
    await exec('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 4M 4M', data.path]);
    expect((await call('POST', `/api/v1/vms/${vm.id}/actions`, { action: 'start' })).body.state).toBe('Running');
    const pid = (await virsh('domid', domainName(vm.id))).trim();
    // QEMU holds the write lock now: qemu-img could not have taken this snapshot.
    await expect(exec('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 4k', data.path])).rejects.toThrow(/write" lock/);

    const res = await call('POST', `/api/v1/volumes/${data.id}/snapshots`, { name: 'live-1', asyncBackup: true });
    expect(res.status, JSON.stringify(res.body)).toBe(201);
    expect(await snapshotTags(data.path)).toContain(res.body.id);
    // Taken on the VM's host, by its worker (its task queue), not by whichever main worker ran the workflow.
    const history = await h.stack.client.workflow.getHandle(`snapshot-${res.body.id}`).fetchHistory();
    const primaryOn = (history.events ?? [])
      .filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'createSnapshotOnPrimary')
      .map((e) => e.activityTaskScheduledEventAttributes?.taskQueue?.name);
    expect(primaryOn).toEqual([`${h.stack.env.TEMPORAL_TASK_QUEUE}-host-kvm-host-1`]);
    const done = await waitFor(async () => {
      const s = (await call('GET', `/api/v1/snapshots/${res.body.id}`)).body;
      return s.state === 'BackedUp' || s.state === 'Error' ? s : undefined;
    }, 60_000, 'the backup');
    expect(done.state, JSON.stringify(done)).toBe('BackedUp');
    expect(await virsh('domstate', domainName(vm.id))).toBe('running');
    expect((await virsh('domid', domainName(vm.id))).trim()).toBe(pid);

    // The backup holds the disk as it was: a volume made from it reads the pattern back.
    const restored = await call('POST', `/api/v1/snapshots/${res.body.id}/volumes`, { name: 'from-live' });
    expect(restored.status, JSON.stringify(restored.body)).toBe(201);
    const restoredPath = (await call('GET', `/api/v1/volumes/${restored.body.id}`)).body.path;
    const read = await exec('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x5a 4M 4M', restoredPath]);
    expect(read.stdout).not.toMatch(/Pattern verification failed/);

    // A second one is backed up as a delta on the first (read through qemu-nbd with shared access), and restores.
    const second = await call('POST', `/api/v1/volumes/${data.id}/snapshots`, { name: 'live-2', asyncBackup: true });
    expect(second.status, JSON.stringify(second.body)).toBe(201);
    const secondDone = await waitFor(async () => {
      const s = (await call('GET', `/api/v1/snapshots/${second.body.id}`)).body;
      return s.state === 'BackedUp' || s.state === 'Error' ? s : undefined;
    }, 60_000, 'the second backup');
    expect(secondDone.state, JSON.stringify(secondDone)).toBe('BackedUp');
    expect(secondDone.backup).toMatchObject({ kind: 'incremental', parentSnapshotId: res.body.id });
    const fromSecond = await call('POST', `/api/v1/snapshots/${second.body.id}/volumes`, { name: 'from-live-2' });
    const secondPath = (await call('GET', `/api/v1/volumes/${fromSecond.body.id}`)).body.path;
    expect((await exec('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x5a 4M 4M', secondPath])).stdout).not.toMatch(/Pattern verification failed/);

    // Reverting a running VM's disk is refused; deleting the snapshot is done by QEMU, the VM still running.
    expect((await call('POST', `/api/v1/snapshots/${res.body.id}/revert`)).status).toBe(409);
    const deleted = await call('DELETE', `/api/v1/snapshots/${res.body.id}`);
    expect([200, 202, 204]).toContain(deleted.status);
    await waitFor(async () => ((await snapshotTags(data.path)).includes(res.body.id) ? undefined : true), 30_000, 'the tag to go');
    expect(await virsh('domstate', domainName(vm.id))).toBe('running');
  });

  it('snapshots taken at random moments while the guest writes are each backed up as a state the disk had, in order', async () => {
    const vm = (await call('POST', '/api/v1/vms', { name: 'live-writing', hypervisor: 'KVM', rootDiskSizeBytes: 16 * MiB, dataDisks: [{ sizeBytes: 16 * MiB }] })).body;
    expect(vm.state).toBe('Running');
    const data = vm.volumes.find((v: { type: string }) => v.type === 'DATADISK');
    await guestWriting(vm.id);
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      await new Promise((r) => setTimeout(r, 300 + Math.floor(Math.random() * 1500)));
      const res = await call('POST', `/api/v1/volumes/${data.id}/snapshots`, { name: `writing-${i}`, asyncBackup: true });
      expect(res.status, JSON.stringify(res.body)).toBe(201);
      ids.push(res.body.id);
    }
    let previous = -1;
    for (const id of ids) {
      const done = await waitFor(async () => {
        const s = (await call('GET', `/api/v1/snapshots/${id}`)).body;
        return s.state === 'BackedUp' || s.state === 'Error' ? s : undefined;
      }, 120_000, `the backup of ${id}`);
      expect(done.state, JSON.stringify(done)).toBe('BackedUp');
      // Restored from its backup (a delta chain after the first), the disk is one instant of the workload.
      const restored = (await call('POST', `/api/v1/snapshots/${id}/volumes`, { name: `from-${id.slice(0, 8)}` })).body;
      const restoredPath = (await call('GET', `/api/v1/volumes/${restored.id}`)).body.path;
      const verdict = await verifyWorkload(restoredPath);
      expect(verdict.problems).toEqual([]);
      expect(verdict.ok).toBe(true);
      // Each one a later instant (the guest, starved of CPU, may not have written in between).
      expect(verdict.maxSeq).toBeGreaterThanOrEqual(previous);
      previous = verdict.maxSeq;
    }
    // The guest wrote on throughout: its disk now is past the last snapshot, and still a state it had.
    expect(await virsh('domstate', domainName(vm.id))).toBe('running');
    await waitFor(async () => ((await verifyWorkload(data.path)).maxSeq > previous ? true : undefined), 60_000, 'the guest to write past the last snapshot');
  });

  /** A running VM whose data disk holds 12 MiB of pattern 0x5a (written before its QEMU held it) and the workload. */
  async function runningVmWithData(name: string) {
    const vm = (await call('POST', '/api/v1/vms', { name, hypervisor: 'KVM', rootDiskSizeBytes: 16 * MiB, dataDisks: [{ sizeBytes: 16 * MiB }], start: false })).body;
    const data = vm.volumes.find((v: { type: string }) => v.type === 'DATADISK');
    await exec('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 2M 12M', data.path]);
    expect((await call('POST', `/api/v1/vms/${vm.id}/actions`, { action: 'start' })).body.state).toBe('Running');
    await guestWriting(vm.id);
    return { vm, data };
  }
  /** Takes a snapshot and waits until its copy has begun (some bytes done, not yet all). */
  async function snapshotBackingUp(volumeId: string, name: string) {
    const res = await call('POST', `/api/v1/volumes/${volumeId}/snapshots`, { name, asyncBackup: true });
    expect(res.status, JSON.stringify(res.body)).toBe(201);
    await waitFor(async () => {
      const s = (await call('GET', `/api/v1/snapshots/${res.body.id}`)).body;
      expect(s.state).not.toBe('BackedUp');
      return s.state === 'BackingUp' && s.backup.bytesDone > 0 ? true : undefined;
    }, 30_000, 'the backup copy to begin');
    return res.body.id as string;
  }
  /** Waits for BackedUp; the backup, restored, holds the pattern and one instant of the workload. */
  async function backedUpAndVerified(id: string) {
    const done = await waitFor(async () => {
      const s = (await call('GET', `/api/v1/snapshots/${id}`)).body;
      return s.state === 'BackedUp' || s.state === 'Error' ? s : undefined;
    }, 120_000, `the backup of ${id}`);
    expect(done.state, JSON.stringify(done)).toBe('BackedUp');
    expect(done.backup.attempts).toBe(1);
    const restored = (await call('POST', `/api/v1/snapshots/${id}/volumes`, { name: `from-${id.slice(0, 8)}` })).body;
    const restoredPath = (await call('GET', `/api/v1/volumes/${restored.id}`)).body.path;
    const read = await exec('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0x5a 2M 12M', restoredPath]);
    expect(read.stdout).not.toMatch(/Pattern verification failed/);
    const verdict = await verifyWorkload(restoredPath);
    expect(verdict.problems).toEqual([]);
    expect(verdict.ok).toBe(true);
  }

  it('a backup of a running VM’s disk survives the VM being stopped, started and rebooted during its copy', async () => {
    const { vm, data } = await runningVmWithData('live-lifecycle');
    const id = await snapshotBackingUp(data.id, 'during-lifecycle');
    const act = (action: string) => call('POST', `/api/v1/vms/${vm.id}/actions`, { action });
    // The seed allows each of these while a data disk backs up; the copy reads the image file, not the QEMU.
    const backupState = async () => (await call('GET', `/api/v1/snapshots/${id}`)).body.state;
    expect((await act('stop')).body.state).toBe('Stopped');
    expect(await backupState()).toBe('BackingUp');
    expect((await act('start')).body.state).toBe('Running');
    expect(await backupState()).toBe('BackingUp');
    expect((await act('reboot')).status).toBe(200);
    await backedUpAndVerified(id);
  });

  it('a backup of a running VM’s disk survives its QEMU being killed during the copy', async () => {
    const { vm, data } = await runningVmWithData('live-qemu-killed');
    const id = await snapshotBackingUp(data.id, 'during-kill');
    const pid = Number((await exec('pgrep', ['-f', `guest=${domainName(vm.id)}`])).stdout.trim().split('\n')[0]);
    process.kill(pid, 'SIGKILL');
    await waitFor(async () => ((await virsh('domstate', domainName(vm.id)).catch(() => 'absent')) !== 'running' ? true : undefined), 30_000, 'QEMU to die');
    await backedUpAndVerified(id);
  });

  it("snapshots a running VM's disks at one instant on its host, each backed up on its own; a stopped VM's too", async () => {
    const vm = (await call('POST', '/api/v1/vms', { name: 'together', hypervisor: 'KVM', rootDiskSizeBytes: 16 * MiB, dataDisks: [{ sizeBytes: 16 * MiB }, { sizeBytes: 16 * MiB }] })).body;
    expect(vm.state).toBe('Running');
    const volumes = [...vm.volumes].sort((x: { deviceId: number }, y: { deviceId: number }) => x.deviceId - y.deviceId) as Array<{ id: string; path: string }>;
    // Refused before anything is made: a volume that is not the VM's.
    const other = (await call('POST', '/api/v1/volumes', { name: 'not-attached', sizeBytes: 8 * MiB, hypervisor: 'KVM' })).body;
    const refused = await call('POST', `/api/v1/vms/${vm.id}/snapshots`, { volumeIds: [volumes[1]!.id, other.id] });
    expect(refused.status, JSON.stringify(refused.body)).toBe(400);
    expect((await call('GET', `/api/v1/snapshots?volumeId=${volumes[1]!.id}`)).body).toEqual([]);

    await guestWriting(vm.id);
    const res = await call('POST', `/api/v1/vms/${vm.id}/snapshots`, { name: 'all', asyncBackup: true });
    expect(res.status, JSON.stringify(res.body)).toBe(201);
    expect(res.body.instant).toBe('live');
    const snaps = res.body.snapshots as Array<{ id: string; volumeId: string; name: string; state: string }>;
    expect(snaps.map((x) => x.volumeId)).toEqual(volumes.map((v) => v.id));
    for (const [i, x] of snaps.entries()) {
      expect(['CreatedOnPrimary', 'BackingUp', 'BackedUp']).toContain(x.state);
      expect(x.name.startsWith('all-')).toBe(true);
      // Exactly one internal snapshot of that tag, taken by the VM's QEMU.
      expect((await snapshotTags(volumes[i]!.path)).filter((t) => t === x.id)).toHaveLength(1);
    }
    const events = (await h.stack.pool.query<{ description: string }>("SELECT description FROM events WHERE resource_id = ANY($1::text[]) AND description LIKE '%at one instant%'", [snaps.map((x) => x.id)])).rows;
    expect(events.length).toBeGreaterThanOrEqual(snaps.length);
    for (const x of snaps) {
      const done = await waitFor(async () => {
        const s = (await call('GET', `/api/v1/snapshots/${x.id}`)).body;
        return s.state === 'BackedUp' || s.state === 'Error' ? s : undefined;
      }, 120_000, `the backup of ${x.id}`);
      expect(done.state, JSON.stringify(done)).toBe('BackedUp');
    }
    // The data disk the guest writes: its backup is one instant of the workload.
    const restored = (await call('POST', `/api/v1/snapshots/${snaps[1]!.id}/volumes`, { name: 'together-vdb' })).body;
    const verdict = await verifyWorkload((await call('GET', `/api/v1/volumes/${restored.id}`)).body.path);
    expect(verdict.problems).toEqual([]);
    expect(verdict.ok).toBe(true);

    expect((await call('POST', `/api/v1/vms/${vm.id}/actions`, { action: 'stop', forced: true })).body.state).toBe('Stopped');
    const stopped = await call('POST', `/api/v1/vms/${vm.id}/snapshots`, { volumeIds: [volumes[1]!.id, volumes[2]!.id], asyncBackup: true });
    expect(stopped.status, JSON.stringify(stopped.body)).toBe(201);
    expect(stopped.body.instant).toBe('offline');
    expect(stopped.body.snapshots).toHaveLength(2);
  });

  it('refuses to resize a running VM’s disk, and changes nothing', async () => {
    const vm = (await call('POST', '/api/v1/vms', { name: 'live-refuse', hypervisor: 'KVM', rootDiskSizeBytes: 16 * MiB })).body;
    const root = vm.volumes[0];
    const resized = await call('POST', `/api/v1/volumes/${root.id}/resize`, { sizeBytes: 32 * MiB });
    expect(resized.status).toBe(409);
    expect(resized.body.error.message).toMatch(/stop the VM before resizing/);
    expect((await call('GET', `/api/v1/volumes/${root.id}`)).body).toMatchObject({ sizeBytes: 16 * MiB, state: 'Ready' });
  });
});
