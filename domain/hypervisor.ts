/** The hypervisors whose volumes volsnap snapshots (docs/design.md §2): KVM (qcow2) and XenServer (VHD). */
export const HYPERVISORS = ['KVM', 'XenServer'] as const;

export type Hypervisor = (typeof HYPERVISORS)[number];
