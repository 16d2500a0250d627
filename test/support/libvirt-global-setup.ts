/**
 * One libvirt for the whole test run (the hypervisor tier's files share it): a running one is used as it is;
 * otherwise it is started here, under its keepers, and stopped when the run ends. Test files that call
 * ensureLibvirt then find it answering and own nothing, so none stops it under another. Where libvirt cannot
 * run, the reason is passed on and only the hypervisor tier fails, with it.
 */
import { ensureLibvirt, type LibvirtDaemon } from '../../compute/libvirt-daemon.js';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import type { TestProject } from 'vitest/node';
import { run } from '../../storage/exec.js';

let daemon: LibvirtDaemon | undefined;

declare module 'vitest' {
  export interface ProvidedContext {
    /** This run's keeper runs libvirtd: the restart test may kill it (a host's own libvirtd is not ours to). */
    libvirtKept: boolean;
    /** Why libvirt cannot run here (the hypervisor tier fails with it), or null. */
    libvirtUnavailable: string | null;
  }
}

// Test files run in forked workers that do not see this process's env: what they need is provided.
export async function setup(project: TestProject): Promise<void> {
  const logDir = mkdtempSync(path.join(tmpdir(), 'volsnap-libvirt-'));
  try {
    daemon = await ensureLibvirt({ logDir, logger: pino({ level: 'warn' }) });
    project.provide('libvirtKept', daemon.started);
    project.provide('libvirtUnavailable', null);
  } catch (err) {
    project.provide('libvirtKept', false);
    project.provide('libvirtUnavailable', err instanceof Error ? err.message : String(err));
  }
}

export async function teardown(): Promise<void> {
  // A libvirt this run started: the domains its tests left behind (a failed test's VMs) go with it, as QEMU
  // would outlive libvirtd. Only those whose disks are in a test's temporary data dir: a developer's own VMs
  // (under their VOLSNAP_DATA_DIR) may have been running under this libvirt too.
  if (daemon?.started) {
    const virsh = (...args: string[]) => run('virsh', ['-q', '-c', daemon!.uri, ...args]).then((r) => r.stdout, () => '');
    for (const name of (await virsh('list', '--name')).split('\n').map((n) => n.trim())) {
      if (!name.startsWith('volsnap-')) continue;
      const disks = await virsh('domblklist', name);
      if (disks.includes(path.join(tmpdir(), 'volsnap-'))) await virsh('destroy', name);
    }
  }
  await daemon?.stop();
}
