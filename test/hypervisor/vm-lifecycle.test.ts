import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { domainName } from '../../compute/domain-xml.js';
import { MiB, startApiHarness, type ApiHarness } from '../api/harness.js';
import { openFiles, requireLibvirt, virsh } from '../support/hypervisor.js';

const exec = promisify(execFile);
const domstate = (vmId: string) => virsh('domstate', domainName(vmId)).catch(() => 'absent');

async function qemuPid(vmId: string): Promise<number> {
  const { stdout } = await exec('pgrep', ['-f', `guest=${domainName(vmId)}`]);
  return Number(stdout.trim().split('\n')[0]);
}

async function eventually<T>(fn: () => Promise<T | undefined>, ms: number, what: string): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/**
 * VMs through the real service on the real libvirt and QEMU of this host (the hypervisor tier): what the API
 * answers is checked against `virsh` and the QEMU process itself. These VMs boot no OS (the firmware finds no
 * bootable disk and waits), so a stop's guest shutdown is never answered and it powers off at its timeout.
 */
describe('VM lifecycle on libvirt, through the API', () => {
  let h: ApiHarness;
  const vmIds: string[] = [];
  const call = (method: string, p: string, body?: unknown) => h.call(method, p, body === undefined ? {} : { body });
  const act = (vmId: string, body: Record<string, unknown>) => call('POST', `/api/v1/vms/${vmId}/actions`, body);

  beforeAll(async () => {
    requireLibvirt();
    h = await startApiHarness({
      // The test guest boots (workload off: these tests watch the VM, not its data): it answers ACPI and hot-plug.
      env: { KVM_COMPUTE: 'libvirt', VM_ACCELERATOR: 'qemu', VM_GUEST_WORKLOAD: 'off', VM_STOP_TIMEOUT_SECONDS: '30', VM_POWER_SYNC_SECONDS: '1', VM_ACTION_STALE_SECONDS: '10', VM_HOST_TIMEOUT_SECONDS: '8' },
    });
  }, 120_000);
  afterAll(async () => {
    await h?.stop();
  });

  async function createVm(name: string, body: Record<string, unknown> = {}) {
    const res = await call('POST', '/api/v1/vms', { name, hypervisor: 'KVM', rootDiskSizeBytes: 16 * MiB, ...body });
    expect(res.status, JSON.stringify(res.body)).toBe(201);
    vmIds.push(res.body.id);
    return res.body as { id: string; hostId: string; state: string; stateSince: string; lastError: string | null; volumes: Array<{ id: string; path: string; deviceId: number }> };
  }
  const get = async (id: string) => (await call('GET', `/api/v1/vms/${id}`)).body;
  /** Waits until the guest's console (through the API) prints `line`. */
  const consoleShows = (vmId: string, line: string) =>
    eventually(async () => {
      const tail = (await call('GET', `/api/v1/vms/${vmId}/console?lines=200`)).body as { lines: string[] };
      return tail.lines.some((l) => l.includes(line)) ? true : undefined;
    }, 60_000, `"${line}" on the console of VM ${vmId}`);
  const events = async (vmId: string) =>
    (await h.stack.pool.query<{ type: string; level: string; description: string }>('SELECT type, level, description FROM events WHERE resource_id = $1 ORDER BY id', [vmId])).rows;

  it('creates a VM as a running domain whose QEMU has its ROOT and data volumes open, in device order', async () => {
    const vm = await createVm('lc-create', { dataDisks: [{ sizeBytes: 8 * MiB }] });
    expect(vm.state).toBe('Running');
    expect((vm as unknown as { accelerator: string }).accelerator).toBe('qemu');
    const hosts = (await call('GET', '/api/v1/hosts')).body as Array<Record<string, unknown>>;
    expect(hosts.find((x) => x.name === 'kvm-host-1')).toMatchObject({ connected: true, accelerator: 'qemu', acceleratorReason: 'configured (VM_ACCELERATOR)' });
    expect(hosts.every((x) => !('uri' in x))).toBe(true);
    // Its host worker polls the host's queue (npm start is kvm-host-1); nothing serves kvm-host-2's.
    const lastPoll = Date.parse(String(hosts.find((x) => x.name === 'kvm-host-1')!.hostWorkerLastPoll));
    expect(Math.abs(Date.now() - lastPoll)).toBeLessThan(5 * 60_000);
    expect(hosts.find((x) => x.name === 'kvm-host-2')!.hostWorkerLastPoll).toBeNull();
    expect(await domstate(vm.id)).toBe('running');
    const files = openFiles(await qemuPid(vm.id));
    const paths = vm.volumes.sort((a, b) => a.deviceId - b.deviceId).map((v) => v.path);
    expect(paths).toHaveLength(2);
    for (const p of paths) expect(files).toContain(p);
    const blk = await virsh('domblklist', domainName(vm.id));
    expect(blk).toMatch(new RegExp(`vda\\s+${paths[0]}`));
    expect(blk).toMatch(new RegExp(`vdb\\s+${paths[1]}`));
  });

  it('created with start=false: Stopped, with no domain; start boots its guest; stop is a guest shutdown', async () => {
    const vm = await createVm('lc-stopped', { start: false });
    expect(vm.state).toBe('Stopped');
    expect(await domstate(vm.id)).toBe('absent');
    const started = await act(vm.id, { action: 'start' });
    expect(started.status, JSON.stringify(started.body)).toBe(200);
    expect(started.body.state).toBe('Running');
    expect(await domstate(vm.id)).toBe('running');
    await consoleShows(vm.id, 'volsnap-guest: ready');

    const stopped = await act(vm.id, { action: 'stop' });
    expect(stopped.body.state).toBe('Stopped');
    expect(await domstate(vm.id)).toBe('absent');
    expect((await events(vm.id)).map((e) => e.description)).toContain('VM lc-stopped stopped (shut down by its guest)');
  });

  it('a forced stop powers off at once; reboot keeps the same domain running', async () => {
    const vm = await createVm('lc-forced');
    const pid = await qemuPid(vm.id);
    expect((await act(vm.id, { action: 'reboot' })).body.state).toBe('Running');
    expect(await domstate(vm.id)).toBe('running');
    expect(await qemuPid(vm.id)).toBe(pid);
    const stopped = await act(vm.id, { action: 'stop', forced: true });
    expect(stopped.body.state).toBe('Stopped');
    expect(await domstate(vm.id)).toBe('absent');
    const { rows } = await h.stack.pool.query(`SELECT details FROM events WHERE resource_id = $1 AND type = 'VM.STOP'`, [vm.id]);
    expect(rows.map((r) => r.details)).toEqual([expect.objectContaining({ forced: true, result: 'powered-off' })]);
  });

  it('hot-plugs a volume into a running VM, which its guest sees, and unplugs it again', async () => {
    const vm = await createVm('lc-hotplug');
    await consoleShows(vm.id, 'volsnap-guest: ready');
    const disk = (await call('POST', '/api/v1/volumes', { name: 'lc-extra', sizeBytes: 8 * MiB })).body;
    const attached = await act(vm.id, { action: 'attach-volume', volumeId: disk.id });
    expect(attached.status, JSON.stringify(attached.body)).toBe(200);
    expect(attached.body.pendingDisk).toBeNull();
    const path1 = (await call('GET', `/api/v1/volumes/${disk.id}`)).body.path;
    expect(await virsh('domblklist', domainName(vm.id))).toMatch(new RegExp(`vdb\\s+${path1}`));
    expect(openFiles(await qemuPid(vm.id))).toContain(path1);
    await consoleShows(vm.id, 'volsnap-guest: disk added vdb');

    const detached = await act(vm.id, { action: 'detach-volume', volumeId: disk.id });
    expect(detached.status, JSON.stringify(detached.body)).toBe(200);
    expect((await call('GET', `/api/v1/volumes/${disk.id}`)).body).toMatchObject({ vmId: null, deviceId: null });
    expect(await virsh('domblklist', domainName(vm.id))).not.toContain(path1);
    await consoleShows(vm.id, 'volsnap-guest: disk removed vdb');
    expect((await events(vm.id)).map((e) => e.description)).toContain(`volume lc-extra detached from VM lc-hotplug (hot-unplugged)`);
  });

  it('puts an ISO into a running VM’s CD-ROM and ejects it; an ISO without an image file is refused', async () => {
    const vm = await createVm('lc-iso');
    // Once the guest has booted: a kernel probing its CD-ROM can close the tray under libvirt (the driver asks
    // again; here the test does not depend on how long that takes).
    await consoleShows(vm.id, 'volsnap-guest: ready');
    const isos = (await call('GET', '/api/v1/isos')).body as Array<{ id: string; name: string; hasImage: boolean }>;
    const tools = isos.find((i) => i.name === 'volsnap-tools')!;
    expect(tools.hasImage).toBe(true);
    const inserted = await act(vm.id, { action: 'attach-iso', isoId: tools.id });
    expect(inserted.status, JSON.stringify(inserted.body)).toBe(200);
    expect(inserted.body.isoId).toBe(tools.id);
    expect(await virsh('domblklist', domainName(vm.id))).toMatch(/hdc\s+\S*volsnap-tools\.iso/);

    const ejected = await act(vm.id, { action: 'detach-iso' });
    expect(ejected.body.isoId).toBeNull();
    expect(await virsh('domblklist', domainName(vm.id))).toMatch(/hdc\s+-/);

    const nameOnly = isos.find((i) => !i.hasImage)!;
    const refused = await act(vm.id, { action: 'attach-iso', isoId: nameOnly.id });
    expect(refused.status).toBe(409);
    expect(refused.body.error.message).toContain('has no image file on this server');
    expect((await get(vm.id)).isoId).toBeNull();
  });

  it('shows an admin the tail of the console QEMU writes; a user may not read it', async () => {
    const vm = await createVm('lc-console');
    const res = await call('GET', `/api/v1/vms/${vm.id}/console?lines=20`);
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body).toMatchObject({ vmId: vm.id, lines: expect.any(Array), truncated: expect.any(Boolean) });
    // libvirt opened the file for the serial port when the domain started; the guest writes to it.
    expect(res.body.updatedAt).not.toBeNull();
    await consoleShows(vm.id, 'volsnap-guest: ready');
    const user = await h.createUser('lc-console-user');
    expect((await h.call('GET', `/api/v1/vms/${vm.id}/console`, { key: user.key })).status).toBe(403);
  });

  it('refuses to change the offering of, or migrate, a running VM, and changes nothing', async () => {
    const vm = await createVm('lc-refused');
    const before = await get(vm.id);
    const offerings = (await call('GET', '/api/v1/service-offerings')).body as Array<{ id: string }>;
    const other = offerings.find((o) => o.id !== before.serviceOfferingId)!;
    const res = await act(vm.id, { action: 'change-service-offering', serviceOfferingId: other.id });
    expect(res.status).toBe(409);
    expect(res.body.error.message).toMatch(/running|stop/i);
    const hosts = (await call('GET', '/api/v1/hosts')).body as Array<{ id: string; hypervisor: string }>;
    const otherHost = hosts.find((x) => x.hypervisor === 'KVM' && x.id !== before.hostId)!;
    const moved = await act(vm.id, { action: 'migrate', hostId: otherHost.id });
    expect(moved.status).toBe(409);
    expect(moved.body.error.message).toMatch(/stop it before migrating/);
    expect(await get(vm.id)).toMatchObject({ serviceOfferingId: before.serviceOfferingId, hostId: before.hostId, state: 'Running' });
    expect(await domstate(vm.id)).toBe('running');
  });

  it("a VM whose host has no worker is refused: at once if never connected, after the host timeout if its worker is gone", async () => {
    const vm = await createVm('lc-no-host-worker', { start: false });
    const hosts = (await call('GET', '/api/v1/hosts')).body as Array<{ id: string; name: string; hypervisor: string }>;
    const other = hosts.find((x) => x.hypervisor === 'KVM' && x.id !== vm.hostId)!;
    expect((await act(vm.id, { action: 'migrate', hostId: other.id })).status).toBe(200);
    try {
      const never = await act(vm.id, { action: 'start' });
      expect(never.status).toBe(503);
      expect(never.body.error).toMatchObject({ code: 'HYPERVISOR_UNAVAILABLE' });
      expect(await get(vm.id)).toMatchObject({ state: 'Stopped', lastError: null });
      // As if its worker had connected once and is gone: the step waits on its queue, then is undone.
      await h.stack.pool.query("UPDATE hosts SET uri = 'qemu:///system' WHERE id = $1", [other.id]);
      const gone = await act(vm.id, { action: 'start' });
      expect(gone.status, JSON.stringify(gone.body)).toBe(503);
      expect(gone.body.error.message).toContain(`host ${other.name} did not take the step within 8 s`);
      expect(await get(vm.id)).toMatchObject({ state: 'Stopped', lastError: expect.stringContaining('its host worker is not running') });
      expect((await events(vm.id)).filter((e) => e.type === 'VM.START').map((e) => e.level)).toEqual(['ERROR']);
      expect(await domstate(vm.id)).toBe('absent');
    } finally {
      await h.stack.pool.query('UPDATE hosts SET uri = NULL WHERE id = $1', [other.id]);
      await act(vm.id, { action: 'migrate', hostId: vm.hostId });
    }
  });

  it('destroy of a running VM powers it off first; nothing of its domain is left', async () => {
    const vm = await createVm('lc-destroy');
    const res = await act(vm.id, { action: 'destroy' });
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    expect(res.body.state).toBe('Destroyed');
    expect(await domstate(vm.id)).toBe('absent');
  });

  it('a VM an operator powers off on the host is recorded Stopped by the power sync, with a warning event', async () => {
    const vm = await createVm('lc-outside');
    await virsh('destroy', domainName(vm.id));
    const after = await eventually(async () => {
      const v = await get(vm.id);
      return v.state === 'Stopped' ? v : undefined;
    }, 20_000, 'the power sync to record the VM Stopped');
    expect(Date.parse(after.stateSince)).toBeGreaterThan(Date.parse(vm.stateSince));
    const warned = (await events(vm.id)).find((e) => e.type === 'VM.STOP' && e.level === 'WARN');
    expect(warned?.description).toBe('VM lc-outside was found stopped on its host; volsnap did not stop it');
    // And it starts again from its row.
    expect((await act(vm.id, { action: 'start' })).body.state).toBe('Running');
  });

  it('a VM whose QEMU process is killed is recorded Stopped by the power sync, and starts again', async () => {
    const vm = await createVm('lc-killed');
    process.kill(await qemuPid(vm.id), 'SIGKILL');
    await eventually(async () => ((await get(vm.id)).state === 'Stopped' ? true : undefined), 20_000, 'the power sync to record the VM Stopped');
    const warned = (await events(vm.id)).filter((e) => e.type === 'VM.STOP' && e.level === 'WARN');
    expect(warned).toHaveLength(1);
    expect(warned[0]!.description).toMatch(/^VM lc-killed (crashed|was found stopped) on its host; volsnap did not stop it$/);
    expect((await act(vm.id, { action: 'start' })).body.state).toBe('Running');
    expect(await domstate(vm.id)).toBe('running');
  });

  it('a disk an operator hot-plugs with virsh is recorded attached; a hot-plug whose process died is settled from the domain', async () => {
    const vm = await createVm('lc-disks');
    const spare = (await call('POST', '/api/v1/volumes', { name: 'lc-spare', sizeBytes: 8 * MiB })).body;
    const sparePath = (await call('GET', `/api/v1/volumes/${spare.id}`)).body.path;
    await virsh('attach-disk', domainName(vm.id), sparePath, 'vdc', '--live', '--driver', 'qemu', '--subdriver', 'qcow2', '--targetbus', 'virtio');
    const attached = await eventually(async () => {
      const v = (await call('GET', `/api/v1/volumes/${spare.id}`)).body;
      return v.vmId === vm.id ? v : undefined;
    }, 20_000, 'the sync to record the operator\'s disk');
    expect(attached.deviceId).toBe(2);
    expect((await events(vm.id)).map((e) => e.description)).toContain(`volume lc-spare is attached to VM lc-disks on its host (vdc); recorded attached`);

    // As a process that committed an attach (row and pending mark) and died before asking libvirt would leave it.
    const lost = (await call('POST', '/api/v1/volumes', { name: 'lc-lost', sizeBytes: 8 * MiB })).body;
    await h.stack.pool.query(`UPDATE volumes SET vm_id = $1, device_id = 3 WHERE id = $2`, [vm.id, lost.id]);
    await h.stack.pool.query(
      `UPDATE virtual_machines SET pending_disk = $2, pending_disk_since = now() - interval '1 hour', updated = now() WHERE id = $1`,
      [vm.id, JSON.stringify({ op: 'attach', volumeId: lost.id, target: 'vdd' })],
    );
    expect((await act(vm.id, { action: 'reboot' })).status).toBe(409);
    await eventually(async () => ((await call('GET', `/api/v1/volumes/${lost.id}`)).body.vmId === null ? true : undefined), 20_000, 'the stale attach to be settled');
    expect((await get(vm.id)).pendingDisk).toBeNull();
    expect((await events(vm.id)).map((e) => e.description)).toContain(`volume lc-lost is not attached to VM lc-disks on its host; recorded detached`);
    expect((await act(vm.id, { action: 'reboot' })).status).toBe(200);
  });

  it('a VM left Starting by a process that died is settled from libvirt once the action is stale', async () => {
    const vm = await createVm('lc-stale');
    // As a process that committed Starting and died before committing the result would leave it.
    await h.stack.pool.query(`UPDATE virtual_machines SET state = 'Starting', state_since = now() - interval '1 hour' WHERE id = $1`, [vm.id]);
    expect((await act(vm.id, { action: 'stop' })).status).toBe(409);
    const after = await eventually(async () => {
      const v = await get(vm.id);
      return v.state === 'Running' ? v : undefined;
    }, 20_000, 'the power sync to settle the VM Running');
    expect(after.state).toBe('Running');
    const settled = (await events(vm.id)).find((e) => e.type === 'VM.START' && e.level === 'WARN');
    expect(settled?.description).toBe('VM lc-stale was left Starting by an action whose process stopped; its host says it is running');
  });
});
