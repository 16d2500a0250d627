import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, inject, it } from 'vitest';
import { domainName, type DomainSpec } from '../../compute/domain-xml.js';
import { ensureLibvirt, libvirtAnswers, LibvirtUnavailableError } from '../../compute/libvirt-daemon.js';
import { silentLogger } from '../../observability/logger.js';
import { driverFixture, openFiles, virsh } from '../support/hypervisor.js';

const exec = promisify(execFile);


/**
 * The compute driver against the real libvirt and QEMU of this host (the hypervisor tier): domains are started,
 * changed and stopped for real, and checked with virsh and the QEMU process's open files. These domains boot
 * no OS (the firmware finds no bootable disk and waits): what the guest sees is test/hypervisor/guest.test.ts's.
 */
describe('libvirt compute driver', () => {
  const hv = driverFixture('volsnap-hv-', 2000);

  async function spec(disks: number): Promise<DomainSpec> {
    const vmId = randomUUID();
    hv.track(vmId);
    const files = [];
    for (let i = 0; i < disks; i++) files.push({ volumeId: randomUUID(), path: await hv.image(`${vmId}-${i}`) });
    return {
      vmId,
      title: `test ${vmId.slice(0, 8)}`,
      vcpus: 1,
      memoryMb: 128,
      accelerator: 'qemu',
      disks: files,
      isoPath: null,
      consoleLog: path.join(hv.dir, `${vmId}.console.log`),
      user: { uid: process.getuid!(), gid: process.getgid!() },
    };
  }

  it('starts a domain named for the VM whose QEMU has each volume open, in device order; a second start changes nothing', async () => {
    const s = await spec(2);
    expect(await hv.driver.start(s)).toBe('started');
    expect(await virsh('domstate', domainName(s.vmId))).toBe('running');
    expect(await virsh('domuuid', domainName(s.vmId))).toBe(s.vmId);
    // The CD-ROM is there but empty (virsh lists no source for it).
    expect([...(await hv.driver.disks(s.vmId))]).toEqual([
      ['vda', s.disks[0]!.path],
      ['vdb', s.disks[1]!.path],
    ]);
    const pid = (await hv.driver.qemuPid(s.vmId))!;
    expect(pid).toBeGreaterThan(0);
    const open = openFiles(pid);
    for (const d of s.disks) expect(open, `QEMU has ${d.path} open`).toContain(d.path);
    expect(await hv.driver.start(s)).toBe('already-running');
    expect(await hv.driver.qemuPid(s.vmId)).toBe(pid);
    expect((await hv.driver.list()).get(s.vmId)).toBe('running');
  });

  it('stop asks the guest first and powers off after the timeout; a forced stop powers off at once; stopping again is a no-op', async () => {
    const s = await spec(1);
    await hv.driver.start(s);
    const pid = (await hv.driver.qemuPid(s.vmId))!;
    // No OS answers ACPI here, so the guest shutdown times out and the domain is powered off.
    expect(await hv.driver.stop(s.vmId, { timeoutMs: 500 })).toBe('powered-off');
    expect(await hv.driver.powerState(s.vmId)).toBe('absent');
    expect(() => process.kill(pid, 0)).toThrow();
    expect(await hv.driver.stop(s.vmId)).toBe('already-stopped');
    await hv.driver.start(s);
    expect(await hv.driver.stop(s.vmId, { forced: true })).toBe('powered-off');
    expect(await hv.driver.powerState(s.vmId)).toBe('absent');
  });

  it('hot-plugs a disk into a running domain (QEMU opens it) and changes the CD-ROM media', async () => {
    const s = await spec(1);
    await hv.driver.start(s);
    const extra = await hv.image(`${s.vmId}-extra`);
    await hv.driver.attachDisk(s.vmId, { path: extra, target: 'vdb', volumeId: randomUUID() });
    expect((await hv.driver.disks(s.vmId)).get('vdb')).toBe(extra);
    expect(openFiles((await hv.driver.qemuPid(s.vmId))!)).toContain(extra);
    // Attaching what is attached already is a no-op (a retried request).
    await hv.driver.attachDisk(s.vmId, { path: extra, target: 'vdb', volumeId: randomUUID() });

    const iso = path.join(hv.dir, 'test.iso');
    const src = mkdtempSync(path.join(hv.dir, 'iso-'));
    writeFileSync(path.join(src, 'HELLO.TXT'), 'volsnap\n');
    await exec('xorriso', ['-as', 'mkisofs', '-quiet', '-V', 'VOLSNAPTEST', '-o', iso, src]);
    await hv.driver.changeMedia(s.vmId, iso);
    expect((await hv.driver.disks(s.vmId)).get('hdc')).toBe(iso);
    await hv.driver.changeMedia(s.vmId, null);
    expect((await hv.driver.disks(s.vmId)).has('hdc')).toBe(false);
    await hv.driver.stop(s.vmId, { forced: true });
  });

  it('live snapshots go to the disk named, by node names remembered per QEMU process, looked up again when stale', async () => {
    const tags = async (file: string) =>
      ((JSON.parse((await exec('qemu-img', ['info', '-U', '--output=json', file])).stdout).snapshots ?? []) as Array<{ name: string }>).map((t) => t.name).sort();
    const s = await spec(2);
    const [a, b] = s.disks.map((d) => d.path) as [string, string];
    await hv.driver.start(s);
    expect(await hv.driver.snapshotDiskLive(s.vmId, a, 'a1')).toBe('taken');
    expect(await hv.driver.snapshotDiskLive(s.vmId, b, 'b1')).toBe('taken');
    expect(await hv.driver.snapshotDiskLive(s.vmId, a, 'a2')).toBe('taken');
    expect(await tags(a)).toEqual(['a1', 'a2']);
    expect(await tags(b)).toEqual(['b1']);
    // A name QEMU no longer knows (a disk plugged again gets a new one): looked up again, on the right disk.
    const nodes = (hv.driver as unknown as { nodes: Map<string, string> }).nodes;
    for (const k of nodes.keys()) if (k.endsWith(b)) nodes.set(k, 'libvirt-99-format');
    expect(await hv.driver.snapshotDiskLive(s.vmId, b, 'b2')).toBe('taken');
    expect(await tags(b)).toEqual(['b1', 'b2']);
    // A new QEMU (the VM restarted, disks in the other order) has names of its own.
    await hv.driver.stop(s.vmId, { forced: true });
    await hv.driver.start({ ...s, disks: [s.disks[1]!, s.disks[0]!] });
    expect(await hv.driver.snapshotDiskLive(s.vmId, a, 'a3')).toBe('taken');
    expect(await hv.driver.deleteDiskSnapshotLive(s.vmId, b, 'b1')).toBe('deleted');
    expect(await tags(a)).toEqual(['a1', 'a2', 'a3']);
    expect(await tags(b)).toEqual(['b2']);
    await hv.driver.stop(s.vmId, { forced: true });
  });

  it("snapshots several of a running domain's disks in one transaction: all or none", async () => {
    const tags = async (file: string) =>
      ((JSON.parse((await exec('qemu-img', ['info', '-U', '--output=json', file])).stdout).snapshots ?? []) as Array<{ name: string }>).map((t) => t.name).sort();
    const s = await spec(3);
    const [a, b, c] = s.disks.map((d) => d.path) as [string, string, string];
    await hv.driver.start(s);
    expect(await hv.driver.snapshotDisksLive(s.vmId, [{ file: a, tag: 'g1' }, { file: c, tag: 'g1' }])).toBe('taken');
    expect([await tags(a), await tags(b), await tags(c)]).toEqual([['g1'], [], ['g1']]);
    // b already has g2: QEMU refuses the transaction, and a gets none either.
    await hv.driver.snapshotDiskLive(s.vmId, b, 'g2');
    await expect(hv.driver.snapshotDisksLive(s.vmId, [{ file: a, tag: 'g2' }, { file: b, tag: 'g2' }])).rejects.toThrow(/transaction/);
    expect([await tags(a), await tags(b)]).toEqual([['g1'], ['g2']]);
    // A file the domain does not have open: nothing is tried.
    expect(await hv.driver.snapshotDisksLive(s.vmId, [{ file: a, tag: 'g3' }, { file: `${a}.other`, tag: 'g3' }])).toBe('no-domain');
    await hv.driver.stop(s.vmId, { forced: true });
    expect(await hv.driver.snapshotDisksLive(s.vmId, [{ file: a, tag: 'g4' }])).toBe('no-domain');
  });

  it('a domain an operator destroyed behind its back reads as stopped', async () => {
    const s = await spec(1);
    await hv.driver.start(s);
    await virsh('destroy', domainName(s.vmId));
    expect(await hv.driver.powerState(s.vmId)).toBe('absent');
    expect((await hv.driver.list()).has(s.vmId)).toBe(false);
  });

  it('failures carry libvirt\'s own error text', async () => {
    const s = await spec(1);
    s.disks[0]!.path = path.join(hv.dir, 'no-such-image.qcow2');
    const err = await hv.driver.start(s).catch((e: unknown) => e);
    expect(err).toMatchObject({ name: 'LibvirtError' });
    expect((err as Error).message).toMatch(/no-such-image\.qcow2/);
    expect((err as Error).message).not.toMatch(/virsh -q -c/);
    expect(await hv.driver.powerState(s.vmId)).toBe('absent');
  });

  // Only when this run's keeper runs libvirtd (CI; a host's own libvirtd is not ours to kill).
  it.runIf(inject('libvirtKept'))('libvirtd killed under a running domain: its keeper starts it again, the domain runs on, the hv.driver reconnects', async () => {
    const s = await spec(1);
    await hv.driver.start(s);
    const qemu = (await hv.driver.qemuPid(s.vmId))!;
    const libvirtd = Number((await exec('pidof', ['libvirtd'])).stdout.trim().split(' ')[0]);
    process.kill(libvirtd, 'SIGKILL');
    for (let i = 0; i < 300 && !(await libvirtAnswers(hv.daemon.uri)); i++) await new Promise((r) => setTimeout(r, 100));
    expect(Number((await exec('pidof', ['libvirtd'])).stdout.trim().split(' ')[0])).not.toBe(libvirtd);
    expect(await hv.driver.powerState(s.vmId)).toBe('running');
    expect(await hv.driver.qemuPid(s.vmId)).toBe(qemu);
    expect(await hv.driver.stop(s.vmId, { forced: true })).toBe('powered-off');
  });

  it('a libvirt URI that does not answer is a clear start-up error', async () => {
    const err = await ensureLibvirt({ uri: 'qemu+tcp://127.0.0.1:1/system', logDir: path.join(hv.dir, 'none'), logger: silentLogger }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LibvirtUnavailableError);
    expect((err as Error).message).toBe('libvirt does not answer at qemu+tcp://127.0.0.1:1/system (LIBVIRT_URI)');
  });
});
