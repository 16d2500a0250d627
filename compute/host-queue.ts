/**
 * Each KVM host's task queue (docs/design.md §15): work that must run where a VM runs (its libvirt steps, a
 * snapshot of its running disk) goes there, served by the host worker of that host, as CloudStack has an agent
 * per host. Derived from the deployment's main queue, so two deployments on one Temporal never share a host.
 */
export const hostTaskQueue = (mainTaskQueue: string, hostName: string): string => `${mainTaskQueue}-host-${hostName}`;
