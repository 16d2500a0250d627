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
import { run } from '../../storage/exec.js';

let daemon: LibvirtDaemon | undefined;

export async function setup(): Promise<void> {
  const logDir = mkdtempSync(path.join(tmpdir(), 'volsnap-libvirt-'));
  try {
    daemon = await ensureLibvirt({ logDir, logger: pino({ level: 'warn' }) });
    // The restart test kills libvirtd: only when this run's keeper brings it back.
    if (daemon.started) process.env.VOLSNAP_TEST_LIBVIRT_KEPT = '1';
  } catch (err) {
    process.env.VOLSNAP_TEST_LIBVIRT_UNAVAILABLE = err instanceof Error ? err.message : String(err);
  }
}

export async function teardown(): Promise<void> {
  // A libvirt this run started: the domains its tests left (a failed test's VMs) go with it. QEMU would outlive
  // libvirtd. A libvirt that was already running is someone's host: left as it was.
  if (daemon?.started) {
    const names = await run('virsh', ['-q', '-c', daemon.uri, 'list', '--name']).then((r) => r.stdout.split('\n'), () => []);
    for (const name of names.map((n) => n.trim()).filter((n) => n.startsWith('volsnap-'))) {
      await run('virsh', ['-q', '-c', daemon.uri, 'destroy', name]).catch(() => undefined);
    }
  }
  await daemon?.stop();
}
