/**
 * The libvirt domain XML of a volsnap VM (docs/design.md §15): built from the VM's row, its offering and its
 * volumes, nothing else, so defining it again from the same row gives the same domain. Pure: unit-tested.
 */

/** What a domain is built from. */
export interface DomainSpec {
  /** The VM's id: the domain's UUID too, so `virsh list --uuid` names volsnap's VMs by id. */
  vmId: string;
  /** The VM's display name (the domain's title). */
  title: string;
  vcpus: number;
  memoryMb: number;
  /** `kvm` when the probe found KVM working on this host, else `qemu` (TCG). */
  accelerator: 'kvm' | 'qemu';
  /** The VM's volumes: device id N is target vd(a+N) (a hot-plugged disk keeps its target); without ids, list order. */
  disks: Array<{ volumeId: string; path: string; deviceId?: number }>;
  /** The ISO in the CD-ROM, or null for an empty drive (the drive is always there, so media can change live). */
  isoPath: string | null;
  /** Where the serial console is written. */
  consoleLog: string;
  /** Direct kernel boot (the test guest); without it the VM boots its ROOT disk. */
  boot?: { kernel: string; initrd: string; cmdline: string } | undefined;
  /** The user QEMU runs as: the one that owns the images (no relabelling of volsnap's files). */
  user: { uid: number; gid: number };
}

/** The libvirt name of a VM's domain. */
export function domainName(vmId: string): string {
  return `volsnap-${vmId}`;
}

/** The disk target of the volume in position `index` (0: vda). */
export function diskTarget(index: number): string {
  if (index < 0 || index >= 26) throw new RangeError(`a VM has at most 26 disks (vda..vdz), not ${index + 1}`);
  return `vd${String.fromCharCode(97 + index)}`;
}

/** The CD-ROM's target (IDE, so its media can be changed on a running domain). */
export const CDROM_TARGET = 'hdc';

export const VOLSNAP_XMLNS = 'https://volsnap.dev/xmlns/libvirt/1';

export function xmlEscape(s: string): string {
  return s.replace(/[<>&'"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', "'": '&apos;', '"': '&quot;' })[c]!);
}

/** A virtio qcow2 disk element (also what attach-disk gets, as a device XML). */
export function diskXml(path: string, target: string, volumeId: string): string {
  return [
    `<disk type='file' device='disk'>`,
    `  <driver name='qemu' type='qcow2' discard='unmap'/>`,
    `  <source file='${xmlEscape(path)}'/>`,
    `  <target dev='${target}' bus='virtio'/>`,
    `  <serial>${xmlEscape(volumeId.replaceAll('-', '').slice(0, 20))}</serial>`,
    `</disk>`,
  ].join('\n');
}

export function domainXml(spec: DomainSpec): string {
  const e = xmlEscape;
  const boot = spec.boot
    ? [`    <kernel>${e(spec.boot.kernel)}</kernel>`, `    <initrd>${e(spec.boot.initrd)}</initrd>`, `    <cmdline>${e(spec.boot.cmdline)}</cmdline>`]
    : [`    <boot dev='hd'/>`];
  const disks = spec.disks.map((d, i) => diskXml(d.path, diskTarget(d.deviceId ?? i), d.volumeId).replace(/^/gm, '    '));
  return [
    `<domain type='${spec.accelerator}'>`,
    `  <name>${domainName(spec.vmId)}</name>`,
    `  <uuid>${spec.vmId}</uuid>`,
    `  <title>${e(spec.title)}</title>`,
    `  <metadata><volsnap:vm xmlns:volsnap='${VOLSNAP_XMLNS}' id='${spec.vmId}'/></metadata>`,
    `  <memory unit='MiB'>${spec.memoryMb}</memory>`,
    `  <vcpu>${spec.vcpus}</vcpu>`,
    `  <os>`,
    `    <type arch='x86_64' machine='pc'>hvm</type>`,
    ...boot,
    `  </os>`,
    `  <features><acpi/><apic/></features>`,
    // qemu64 under TCG; under KVM too: `-cpu host` aborted on an MSR on a nested host (docs/design.md §15).
    `  <cpu mode='custom' match='exact' check='none'><model fallback='allow'>qemu64</model></cpu>`,
    `  <on_poweroff>destroy</on_poweroff>`,
    `  <on_reboot>restart</on_reboot>`,
    `  <on_crash>destroy</on_crash>`,
    `  <devices>`,
    ...disks,
    `    <disk type='file' device='cdrom'>`,
    `      <driver name='qemu' type='raw'/>`,
    ...(spec.isoPath ? [`      <source file='${e(spec.isoPath)}'/>`] : []),
    `      <target dev='${CDROM_TARGET}' bus='ide'/>`,
    `      <readonly/>`,
    `    </disk>`,
    `    <serial type='file'>`,
    `      <source path='${e(spec.consoleLog)}' append='on'/>`,
    `      <target port='0'/>`,
    `    </serial>`,
    `    <console type='file'>`,
    `      <source path='${e(spec.consoleLog)}' append='on'/>`,
    `      <target type='serial' port='0'/>`,
    `    </console>`,
    `    <video><model type='none'/></video>`,
    `    <memballoon model='none'/>`,
    `  </devices>`,
    // QEMU runs as the images' owner, and libvirt leaves their ownership alone.
    `  <seclabel type='static' model='dac' relabel='no'><label>+${spec.user.uid}:+${spec.user.gid}</label></seclabel>`,
    `</domain>`,
    '',
  ].join('\n');
}
