import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import type { DomainSpec } from '../../compute/domain-xml.js';
import { testGuest, type GuestBoot } from '../../compute/test-guest.js';
import { verifyWorkload, WORKLOAD, WORKLOAD_OFFSET, workloadBlock } from '../support/guest-workload.js';
import { driverFixture } from '../support/hypervisor.js';

const exec = promisify(execFile);

/**
 * The test guest (scripts/build-guest.sh) under real libvirt and QEMU (TCG): it boots, reports its disks on the
 * serial console, writes its workload to the data disk, sees a disk hot-plugged and lets it go when it is
 * unplugged, and powers off when asked over ACPI; the disk it leaves holds a state the verifier accepts.
 */
describe('test guest', () => {
  const hv = driverFixture('volsnap-guest-', 20_000);
  let guest: GuestBoot;

  beforeAll(() => {
    const built = testGuest();
    if (!built) throw new Error('the test guest is not built: run scripts/build-guest.sh (npm run setup does)');
    guest = built;
  });

  const consoleText = (file: string) => (existsSync(file) ? readFileSync(file, 'latin1') : '');

  /** Waits for `pattern` on the console after character `from`; returns its match. */
  async function seen(file: string, pattern: RegExp, opts: { from?: number; ms?: number } = {}): Promise<RegExpExecArray> {
    const deadline = Date.now() + (opts.ms ?? 30_000);
    for (;;) {
      const m = pattern.exec(consoleText(file).slice(opts.from ?? 0));
      if (m) return m;
      if (Date.now() > deadline) throw new Error(`console never showed ${pattern}; it has:\n${consoleText(file).slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  function guestSpec(vmId: string, disks: string[], boot: GuestBoot, memoryMb = 256): DomainSpec {
    return {
      vmId,
      title: 'test guest',
      vcpus: 1,
      memoryMb,
      accelerator: 'qemu',
      disks: disks.map((p) => ({ volumeId: randomUUID(), path: p })),
      isoPath: null,
      consoleLog: path.join(hv.dir, `${vmId}.console.log`),
      boot,
      user: { uid: process.getuid!(), gid: process.getgid!() },
    };
  }

  it('boots, runs its workload, sees a disk hot-plugged and unplugged, waits out an unplug of its data disk, powers off on ACPI; its disk and a live snapshot of it verify, a corrupted copy does not', async () => {
    const vmId = randomUUID();
    hv.track(vmId);
    const root = await hv.image(`${vmId}-root`);
    const data = await hv.image(`${vmId}-data`);
    const spec = guestSpec(vmId, [root, data], guest);
    const consoleLog = spec.consoleLog;
    const booted = Date.now();
    expect(await hv.driver.start(spec)).toBe('started');
    await seen(consoleLog, /volsnap-guest: ready/);
    expect(consoleText(consoleLog)).toMatch(/volsnap-guest: disks vda vdb\r?\n/);
    expect(consoleText(consoleLog)).toMatch(/volsnap-guest: workload on vdb from seq=0/);
    const bootMs = Date.now() - booted;

    // Hot-plug: the guest's virtio-blk finds the new PCI device; unplug: the guest ejects it over ACPI.
    const extra = await hv.image(`${vmId}-extra`);
    let mark = consoleText(consoleLog).length;
    await hv.driver.attachDisk(vmId, { path: extra, target: 'vdc', volumeId: randomUUID() });
    await seen(consoleLog, /volsnap-guest: disk added vdc/, { from: mark });
    mark = consoleText(consoleLog).length;
    await hv.driver.detachDisk(vmId, 'vdc');
    expect((await hv.driver.disks(vmId)).has('vdc')).toBe(false);
    await seen(consoleLog, /volsnap-guest: disk removed vdc/, { from: mark });

    // The data disk unplugged under the workload and plugged back: it waits, then goes on where it was.
    await seen(consoleLog, /volsnap-guest: wrote seq=50\b/);
    mark = consoleText(consoleLog).length;
    await hv.driver.detachDisk(vmId, 'vdb');
    await seen(consoleLog, /volsnap-guest: workload paused: vdb gone/, { from: mark });
    await hv.driver.attachDisk(vmId, { path: data, target: 'vdb', volumeId: spec.disks[1]!.volumeId });
    const resumed = await seen(consoleLog, /volsnap-guest: workload resumed on vdb at seq=(\d+)/, { from: mark });
    // From what the disk holds: past what it wrote before.
    expect(Number(resumed[1])).toBeGreaterThan(50);

    // The workload advances (it prints every 50 blocks), past one wave over the region.
    await seen(consoleLog, /volsnap-guest: wrote seq=100\b/, { ms: 30_000 });

    // A snapshot the running QEMU takes is one instant of the disk: what backups of a running VM read.
    expect(await hv.driver.snapshotDiskLive(vmId, data, 'mid')).toBe('taken');
    await seen(consoleLog, /volsnap-guest: wrote seq=150\b/, { ms: 30_000 });

    // ACPI: the guest powers itself off, no forced power-off needed.
    const stopping = Date.now();
    expect(await hv.driver.stop(vmId)).toBe('shut-down');
    const stopMs = Date.now() - stopping;
    expect(await hv.driver.powerState(vmId)).toBe('absent');
    expect(consoleText(consoleLog)).toMatch(/volsnap-guest: power button: powering off/);
    expect(consoleText(consoleLog)).not.toMatch(/workload: write of seq=\d+ failed/);

    const verdict = await verifyWorkload(data);
    expect(verdict.problems).toEqual([]);
    expect(verdict.ok).toBe(true);
    expect(verdict.maxSeq).toBeGreaterThanOrEqual(150);
    expect(verdict.written).toBe(WORKLOAD.slots);
    const mid = await verifyWorkload(data, { snapshot: 'mid' });
    expect(mid.problems).toEqual([]);
    expect(mid.maxSeq).toBeGreaterThanOrEqual(100);
    expect(mid.maxSeq).toBeLessThan(150);
    // The ROOT disk is never written.
    expect((await verifyWorkload(root)).problems).toEqual(['no workload block written']);

    // A torn block: its header, then something else.
    const torn = path.join(hv.dir, 'torn.qcow2');
    copyFileSync(data, torn);
    await exec('qemu-io', ['-f', 'qcow2', '-c', `write -q -P 0x55 ${WORKLOAD_OFFSET + 3 * WORKLOAD.blockSize + 2048} 2048`, torn]);
    const tornVerdict = await verifyWorkload(torn);
    expect(tornVerdict.ok).toBe(false);
    expect(tornVerdict.problems).toEqual([expect.stringMatching(/^slot 3: seq=\d+: checksum mismatch/)]);

    // A valid block, but a wave older than its neighbours: a state the disk never had.
    const stale = path.join(hv.dir, 'stale.qcow2');
    copyFileSync(data, stale);
    // (Not the highest block's slot: the wave before there is the state just before it was written.)
    const slot = (verdict.maxSeq - 1) % WORKLOAD.slots;
    const oldSeq = verdict.maxSeq - 1 - WORKLOAD.slots;
    const blockFile = path.join(hv.dir, 'old-block');
    writeFileSync(blockFile, workloadBlock(oldSeq));
    await exec('qemu-io', ['-f', 'qcow2', '-c', `write -q -s ${blockFile} ${WORKLOAD_OFFSET + slot * WORKLOAD.blockSize} ${WORKLOAD.blockSize}`, stale]);
    const staleVerdict = await verifyWorkload(stale);
    expect(staleVerdict.ok).toBe(false);
    expect(staleVerdict.maxSeq).toBe(verdict.maxSeq);
    expect(staleVerdict.problems).toEqual([`slot ${slot}: seq=${oldSeq}, not seq=${verdict.maxSeq - 1} (not one instant with seq=${verdict.maxSeq})`]);
    console.log(`test guest: ready ${bootMs} ms after start, shut down in ${stopMs} ms; workload reached seq=${verdict.maxSeq}`);
  }, 90_000);

  it('with volsnap.workload=0 (and 128 MiB) writes nothing to its data disk', async () => {
    const vmId = randomUUID();
    hv.track(vmId);
    const data = await hv.image(`${vmId}-data`);
    const quiet = testGuest(undefined, { workload: false })!;
    expect(quiet.cmdline).toBe('console=ttyS0 panic=-1 quiet volsnap.workload=0');
    const spec = guestSpec(vmId, [await hv.image(`${vmId}-root`), data], quiet, 128);
    await hv.driver.start(spec);
    await seen(spec.consoleLog, /volsnap-guest: ready/);
    expect(consoleText(spec.consoleLog)).toMatch(/volsnap-guest: disks vda vdb\r?\nvolsnap-guest: workload off\r?\nvolsnap-guest: ready/);
    await new Promise((r) => setTimeout(r, 2000));
    expect(await hv.driver.stop(vmId)).toBe('shut-down');
    expect(consoleText(spec.consoleLog)).not.toMatch(/wrote seq=/);
    expect((await verifyWorkload(data)).problems).toEqual(['no workload block written']);
  }, 60_000);
});
