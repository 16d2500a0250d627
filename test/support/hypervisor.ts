/** What the hypervisor tier's files share: libvirt's availability for the run, and reading a domain from outside. */
import { execFile } from 'node:child_process';
import { readdirSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { inject } from 'vitest';

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
