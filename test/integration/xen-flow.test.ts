import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseXenVolumePath } from '../../storage/xen.js';
import { sha256File } from '../support/fixtures.js';
import { startXenSim, type XenSim } from '../support/xen-sim-process.js';
import { MiB, startApiHarness, waitFor, type ApiHarness } from '../api/harness.js';

const exec = promisify(execFile);

/**
 * The core flow repeated for XenServer, end to end through the HTTP API: VMs and volumes on a (simulated)
 * XenServer pool, early return, backup as VHD, retries and compensation, the policy. Verified against the
 * XenAPI simulator in test/support, not a real host.
 */
describe('XenServer end to end (XenAPI simulator)', () => {
  let sim: XenSim;
  let api: ApiHarness;
  let simDir: string;
  let storePath: string;

  beforeAll(async () => {
    simDir = mkdtempSync(join(tmpdir(), 'volsnap-xensim-'));
    sim = await startXenSim({ dir: simDir, srCount: 1 });
    api = await startApiHarness({
      env: {
        XENSERVER_URL: sim.url,
        XENSERVER_USERNAME: sim.username,
        XENSERVER_PASSWORD: sim.password,
        XENSERVER_SR_UUIDS: sim.srs.join(','),
      },
    });
    storePath = (await api.stack.pool.query('SELECT path FROM image_stores')).rows[0].path;
  });
  afterAll(async () => {
    await api?.stop();
    await sim?.stop();
    rmSync(simDir, { recursive: true, force: true });
  });

  async function xenVm(name: string) {
    const res = await api.call('POST', '/api/v1/vms', { body: { name, hypervisor: 'XenServer', rootDiskSizeBytes: 16 * MiB } });
    expect(res.status, JSON.stringify(res.body)).toBe(201);
    const root = res.body.volumes.find((v: any) => v.type === 'ROOT');
    const { srUuid, vdiUuid } = parseXenVolumePath(root.path);
    return { vm: res.body, root, file: sim.vdiFile(srUuid, vdiUuid) };
  }

  const snapshotState = (id: string, states: string[]) =>
    waitFor(async () => {
      const r = await api.call('GET', `/api/v1/snapshots/${id}`);
      return states.includes(r.body.state) ? r.body : undefined;
    }, 60_000, `snapshot ${id} in ${states}`);

  it('async: created at once, then backed up as a VHD holding the point-in-time bytes', async () => {
    const { vm, root, file } = await xenVm('xen-async');
    expect(vm.hypervisor).toBe('XenServer');
    expect(root.format).toBe('vhd');
    await exec('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 0 4M', file]);

    const created = await api.call('POST', `/api/v1/volumes/${root.id}/snapshots`, { body: { asyncBackup: true } });
    expect(created.status).toBe(201);
    expect(['CreatedOnPrimary', 'BackingUp', 'BackedUp']).toContain(created.body.state);
    // The VM keeps writing to its disk; the backup must hold the snapshot's bytes.
    await exec('qemu-io', ['-f', 'raw', '-c', 'write -P 0xcd 0 4M', file]);

    const done = await snapshotState(created.body.id, ['BackedUp', 'Error']);
    expect(done.state).toBe('BackedUp');
    const image = done.storeRefs.find((r: any) => r.role === 'Image');
    expect(image.installPath).toMatch(/\.vhd$/);
    const backup = join(storePath, image.installPath);
    expect(await sha256File(backup)).toBe(image.checksum);
    const { stdout } = await exec('qemu-io', ['-r', '-f', 'vpc', '-c', 'read -P 0xab 0 4M', backup]);
    expect(stdout).not.toMatch(/Pattern verification failed/);
    expect(readdirSync(dirname(backup))).toEqual([`${created.body.id}.vhd`]);
  });

  it('sync: the caller waits for the VHD backup', async () => {
    const { root } = await xenVm('xen-sync');
    const res = await api.call('POST', `/api/v1/volumes/${root.id}/snapshots`, { body: { asyncBackup: false } });
    expect(res.status).toBe(201);
    expect(res.body.state).toBe('BackedUp');
  });

  it('failed exports: N attempts, then the snapshot VDI is destroyed and the snapshot is Error', async () => {
    const { root } = await xenVm('xen-fail');
    await api.setConfig('backup.max.attempts', 2);
    await api.setConfig('backup.retry.interval', 1);
    await sim.setFaults({ failNextExports: 100 });
    try {
      const res = await api.call('POST', `/api/v1/volumes/${root.id}/snapshots`, { body: { asyncBackup: true } });
      expect(res.status).toBe(201);
      const failed = await snapshotState(res.body.id, ['Error', 'BackedUp']);
      expect(failed.state).toBe('Error');
      expect(failed.backup.attempts).toBe(2);
      const snapshotVdis = (await sim.vdis()).filter((v) => v.other_config.volsnap_snapshot_id === res.body.id);
      expect(snapshotVdis).toEqual([]);
    } finally {
      await sim.setFaults({ failNextExports: 0 });
      await api.setConfig('backup.retry.interval', 300);
      await api.setConfig('backup.max.attempts', 3);
    }
  });

  it('the policy holds while a ROOT backup is in flight on XenServer', async () => {
    const { vm, root } = await xenVm('xen-policy');
    await api.setConfig('backup.retry.interval', 3600);
    await sim.setFaults({ failNextExports: 100 });
    try {
      const res = await api.call('POST', `/api/v1/volumes/${root.id}/snapshots`, { body: { asyncBackup: true } });
      expect(res.status).toBe(201);
      await snapshotState(res.body.id, ['BackingUp']);
      const destroy = await api.call('POST', `/api/v1/vms/${vm.id}/actions`, { body: { action: 'destroy' } });
      expect(destroy.status).toBe(409);
      expect(destroy.body.error.code).toBe('OPERATION_NOT_ALLOWED_DURING_BACKUP');
      const reboot = await api.call('POST', `/api/v1/vms/${vm.id}/actions`, { body: { action: 'reboot' } });
      expect(reboot.status).toBe(200);
    } finally {
      await sim.setFaults({ failNextExports: 0 });
      await api.setConfig('backup.retry.interval', 300);
    }
  });
});
