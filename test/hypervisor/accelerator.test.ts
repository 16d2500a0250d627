import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chooseAccelerator } from '../../compute/accelerator.js';
import type { ComputeDriver } from '../../compute/driver.js';
import { LibvirtComputeDriver } from '../../compute/libvirt.js';
import { testGuest } from '../../compute/test-guest.js';
import { silentLogger } from '../../observability/logger.js';
import { requireLibvirt } from '../support/hypervisor.js';

/**
 * The accelerator probe on this host's real libvirt (the hypervisor tier): it boots the test guest under KVM and
 * answers KVM only if the guest reaches user space in time. Which answer is right depends on the host (here, a
 * nested VM where KVM hangs after the kernel decompresses); what holds everywhere is checked: the answer is one
 * of the two with the probe's own reason, no probe domain is left, and the cached answer is reused without a
 * second boot.
 */
describe('accelerator probe', () => {
  let dir: string;
  let driver: LibvirtComputeDriver;
  const started: string[] = [];

  beforeAll(() => {
    requireLibvirt();
    if (!testGuest()) throw new Error('the test guest is not built: run `npm run setup` (scripts/build-guest.sh)');
    dir = mkdtempSync(path.join(tmpdir(), 'volsnap-accel-'));
    driver = new LibvirtComputeDriver({ uri: 'qemu:///system', workDir: path.join(dir, 'xml'), logger: silentLogger, stopTimeoutMs: 2000 });
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  // A driver that counts the domains the probe starts.
  const counting = (): ComputeDriver =>
    new Proxy(driver, {
      get(target, prop, receiver) {
        if (prop === 'start') return async (spec: Parameters<ComputeDriver['start']>[0]) => (started.push(spec.vmId), target.start(spec));
        return Reflect.get(target, prop, receiver);
      },
    });

  it('boots the guest under KVM with a deadline, answers with what it saw, leaves no domain, and caches the answer', async () => {
    const choice = await chooseAccelerator({ driver: counting(), guest: testGuest(), dir, timeoutMs: 30_000, logger: silentLogger });
    expect(started).toHaveLength(1);
    if (choice.accelerator === 'kvm') expect(choice.reason).toMatch(/^a guest under KVM reached user space in [\d.]+ s$/);
    else expect(choice.reason).toMatch(/^a guest under KVM (did not reach user space in 30 s|stopped before reaching user space|did not start \(.+\)); TCG$/);
    expect(await driver.powerState(started[0]!)).toBe('absent');
    expect(JSON.parse(readFileSync(path.join(dir, 'accelerator.json'), 'utf8'))).toMatchObject({ accelerator: choice.accelerator, qemu: expect.stringMatching(/QEMU emulator version/) });

    const again = await chooseAccelerator({ driver: counting(), guest: testGuest(), dir, timeoutMs: 30_000, logger: silentLogger });
    expect(again).toEqual(choice);
    expect(started).toHaveLength(1);
  });

  it('without a guest to boot it answers TCG and says why', async () => {
    const none = await chooseAccelerator({ driver: counting(), guest: undefined, dir: path.join(dir, 'none'), timeoutMs: 30_000, logger: silentLogger });
    expect(none.accelerator).toBe('qemu');
    expect(none.reason).toMatch(/no \/dev\/kvm|probe guest is not built/);
  });
});
