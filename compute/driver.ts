/**
 * The compute side of a host (docs/design.md §15), apart from its storage (storage/driver.ts), as CloudStack's
 * KVM agent keeps LibvirtComputingResource apart from KVMStorageProcessor. A VM runs as a transient libvirt
 * domain built from its row at every start (as CloudStack's agent does): a stopped VM has no domain, and its
 * configuration is its row, so there is nothing to drift.
 */
import type { DomainSpec } from './domain-xml.js';

/** A domain's power state as volsnap reads it. `absent`: no domain (the VM is stopped). */
export type PowerState = 'running' | 'paused' | 'shutting-down' | 'crashed' | 'absent' | 'other';

export interface ComputeDriver {
  /** The libvirt URI this driver talks to. */
  readonly uri: string;
  /** Starts the VM's domain from `spec`; a domain of the VM already running is left as it is. */
  start(spec: DomainSpec): Promise<'started' | 'already-running'>;
  /**
   * Stops the domain: a guest shutdown (ACPI) waited for up to `timeoutMs`, then a forced power-off; `forced`
   * powers off at once. No domain: nothing to do.
   */
  stop(vmId: string, opts?: { forced?: boolean; timeoutMs?: number }): Promise<'shut-down' | 'powered-off' | 'already-stopped'>;
  /** Reboots the running domain (the guest is asked; a guest that ignores it is reset). */
  reboot(vmId: string): Promise<void>;
  /** Hot-plugs a disk into the running domain. */
  attachDisk(vmId: string, disk: { path: string; target: string; volumeId: string }): Promise<void>;
  /** Hot-unplugs the disk at `target` from the running domain and waits until the guest has let it go. */
  detachDisk(vmId: string, target: string): Promise<void>;
  /** Puts `isoPath` into the running domain's CD-ROM, or ejects it (null). */
  changeMedia(vmId: string, isoPath: string | null): Promise<void>;
  powerState(vmId: string): Promise<PowerState>;
  /** The disks of the running domain: target → source file. */
  disks(vmId: string): Promise<Map<string, string>>;
  /** volsnap's domains on this host (by VM id) and their states. */
  list(): Promise<Map<string, PowerState>>;
  /** The QEMU process of the running domain, or null. */
  qemuPid(vmId: string): Promise<number | null>;
  /**
   * Takes an internal snapshot `tag` of the running domain's disk image `file` through QEMU itself (QMP
   * blockdev-snapshot-internal-sync): the guest runs on; the image's write lock is QEMU's, so qemu-img cannot.
   * 'no-domain' when no running domain of the VM has the file open.
   */
  snapshotDiskLive(vmId: string, file: string, tag: string): Promise<'taken' | 'no-domain'>;
  /**
   * Takes internal snapshots of several of the running domain's disks at one instant: one QMP `transaction`,
   * all or none. 'no-domain' when no running domain of the VM has every file open.
   */
  snapshotDisksLive(vmId: string, disks: Array<{ file: string; tag: string }>): Promise<'taken' | 'no-domain'>;
  /** Deletes internal snapshot `tag` of the running domain's disk image `file` through QEMU; as above. */
  deleteDiskSnapshotLive(vmId: string, file: string, tag: string): Promise<'deleted' | 'no-domain'>;
}

/** A libvirt call that failed; `message` is libvirt's own error text. */
export class LibvirtError extends Error {
  override name = 'LibvirtError';
}
