/**
 * The test guest (scripts/build-guest.sh): Debian's kernel and a busybox initramfs, booted directly
 * (DomainSpec.boot), so the hypervisor tier and the demo have a real OS that answers ACPI, sees hot-plugged
 * disks and writes a verifiable workload to its data disk (scripts/guest/init says what it prints).
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';

export const REPO_ROOT = path.resolve(import.meta.dirname, '..');

/** The kernel command line: the console is the serial port libvirt writes to the VM's console log. */
export const GUEST_CMDLINE = 'console=ttyS0 panic=-1 quiet';

export interface GuestBoot {
  kernel: string;
  initrd: string;
  cmdline: string;
}

/** Where the build script writes the guest: <root>/.tools/guest; without a root, VOLSNAP_GUEST_DIR when set (as for the script). */
export function guestDir(root?: string): string {
  if (root) return path.join(root, '.tools', 'guest');
  return process.env.VOLSNAP_GUEST_DIR ?? path.join(REPO_ROOT, '.tools', 'guest');
}

/**
 * The direct-kernel-boot spec of the built guest, or undefined when it is not built (no manifest, or a file it
 * lists missing). `workload: false` boots it with the workload off (volsnap.workload=0).
 */
export function testGuest(root?: string, opts: { workload?: boolean } = {}): GuestBoot | undefined {
  const dir = guestDir(root);
  const manifestFile = path.join(dir, 'manifest.json');
  if (!existsSync(manifestFile)) return undefined;
  const manifest = JSON.parse(readFileSync(manifestFile, 'utf8')) as { kernelVersion?: string; files?: Record<string, unknown> };
  const kernel = path.join(dir, 'vmlinuz');
  const initrd = path.join(dir, 'initrd.img');
  if (!manifest.kernelVersion || !existsSync(kernel) || !existsSync(initrd)) return undefined;
  const cmdline = opts.workload === false ? `${GUEST_CMDLINE} volsnap.workload=0` : GUEST_CMDLINE;
  return { kernel, initrd, cmdline };
}
