/** What the hypervisor tier's files share: libvirt's availability, a driver per file, reading a domain from outside. */
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, inject } from 'vitest';
import { ensureLibvirt, type LibvirtDaemon } from '../../compute/libvirt-daemon.js';
import { LibvirtComputeDriver } from '../../compute/libvirt.js';
import { silentLogger } from '../../observability/logger.js';

const exec = promisify(execFile);

/** Fails the file with the reason when this run has no libvirt (test/support/libvirt-global-setup.ts). */
export function requireLibvirt(): void {
  const unavailable = inject('libvirtUnavailable');
  if (unavailable) throw new Error(`the hypervisor tier needs libvirt: ${unavailable}`);
}

/** virsh against the system libvirt, as an operator runs it; its output trimmed. */
export async function virsh(...args: string[]): Promise<string> {
  return (await exec('virsh', ['-q', '-c', 'qemu:///system', ...args])).stdout.trim();
}

/** The files a process has open (its /proc fd links). */
export function openFiles(pid: number): string[] {
  const dir = `/proc/${pid}/fd`;
  return readdirSync(dir).flatMap((fd) => {
    try {
      return [readlinkSync(path.join(dir, fd))];
    } catch {
      return [];
    }
  });
}

/**
 * A compute driver on this run's libvirt for one test file, with a scratch dir for its images and consoles:
 * the domains it tracks are powered off and the dir removed when the file ends.
 */
export function driverFixture(prefix: string, stopTimeoutMs: number) {
  let daemon: LibvirtDaemon | undefined;
  let dir = '';
  let driver: LibvirtComputeDriver | undefined;
  const vms: string[] = [];
  beforeAll(async () => {
    requireLibvirt();
    dir = mkdtempSync(path.join(tmpdir(), prefix));
    daemon = await ensureLibvirt({ logDir: path.join(dir, 'libvirt'), logger: silentLogger });
    driver = new LibvirtComputeDriver({ uri: daemon.uri, workDir: path.join(dir, 'xml'), logger: silentLogger, stopTimeoutMs });
  }, 60_000);
  afterAll(async () => {
    for (const id of vms) await driver?.stop(id, { forced: true }).catch(() => undefined);
    await daemon?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });
  return {
    get driver(): LibvirtComputeDriver {
      return driver!;
    },
    get daemon(): LibvirtDaemon {
      return daemon!;
    },
    get dir(): string {
      return dir;
    },
    /** Powers the VM's domain off when the file ends. */
    track(vmId: string): void {
      vms.push(vmId);
    },
    /** A fresh 64 MiB qcow2 in the scratch dir. */
    async image(name: string): Promise<string> {
      const file = path.join(dir, `${name}.qcow2`);
      await exec('qemu-img', ['create', '-q', '-f', 'qcow2', file, String(64 * 1024 * 1024)]);
      return file;
    },
  };
}
