import type { IsoRecord, ServiceOfferingRecord, StoragePoolRecord } from '../../db/catalog-queries.js';
import type { HostView } from '../../services/catalogs.js';
import type { Hypervisor } from '../../db/vms.js';
import type { SettingRow } from '../../db/settings.js';
import type { EventRow } from '../../db/events.js';
import type { AsyncJobRecord } from '../../db/async-jobs.js';
import type { Caller } from '../../services/caller.js';
import type { Services } from '../../services/index.js';
import type { SnapshotView, VmView, VolumeView } from '../../services/views.js';

/*
 * CloudStack's response objects (SnapshotResponse, VolumeResponse, UserVmResponse, ...) built from the views the
 * service layer returns. Field names are CloudStack's; volsnap's own additions use names CloudStack does not.
 */

const GiB = 1024 ** 3;

/** The one zone volsnap presents (every pool, host and store is in it). */
export const ZONE = { id: '6f7e2d86-2e64-4ddc-a073-6a30c90ae646', name: 'volsnap-zone-1' } as const;
export const DOMAIN = { id: '7d31cde5-0ad8-4db6-ba6d-2e73b230eee4', name: 'ROOT', path: 'ROOT' } as const;

/** Built-in blank templates: a VM's hypervisor is its template's; the ROOT disk is `sizeGb` unless rootdisksize says otherwise. */
export const TEMPLATES = [
  { id: '5f3938e3-d0ec-4b12-a57d-718dd0deb44a', name: 'blank-kvm', hypervisor: 'KVM' as Hypervisor, sizeGb: 1, format: 'QCOW2', ostypename: 'Other Linux (64-bit)' },
  { id: '74493231-03a0-452b-9b40-4d7ee87f0f8a', name: 'blank-xenserver', hypervisor: 'XenServer' as Hypervisor, sizeGb: 1, format: 'VHD', ostypename: 'Other Linux (64-bit)' },
] as const;

/** Built-in disk offerings for data disks; `custom` takes its size (GB) from the `size` parameter. */
export const DISK_OFFERINGS = [
  { id: 'c27f286c-f64d-4b67-bf20-c6c6638a3259', name: 'Small', sizeGb: 1, custom: false },
  { id: '0624470a-582f-4a4a-ac6a-eb3f55043822', name: 'Medium', sizeGb: 5, custom: false },
  { id: '5b9eb044-5959-4897-9957-92afe2cbf2dd', name: 'Custom', sizeGb: 0, custom: true },
] as const;

/** A timestamp as CloudStack writes it: 2026-01-02T03:04:05+0000. */
export function csDate(iso: string | null | undefined): string | undefined {
  if (!iso) return undefined;
  return new Date(iso).toISOString().replace(/\.\d{3}Z$/, '+0000');
}

/** Names the responses need, read once per request. */
export interface Lookups {
  accounts: Map<string, string>;
  offerings: Map<string, ServiceOfferingRecord>;
  hosts: Map<string, HostView>;
  isos: Map<string, IsoRecord>;
  pools: Map<string, StoragePoolRecord>;
}

export async function loadLookups(services: Services): Promise<Lookups> {
  const [accounts, offerings, hosts, isos, pools] = await Promise.all([
    services.accounts.list(),
    services.catalogs.serviceOfferings(),
    services.catalogs.hosts(),
    services.catalogs.isos(),
    services.catalogs.storagePools(),
  ]);
  const byId = <T extends { id: string }>(xs: T[]) => new Map(xs.map((x) => [x.id, x]));
  return { accounts: new Map(accounts.map((a) => [a.id, a.name])), offerings: byId(offerings), hosts: byId(hosts), isos: byId(isos), pools: byId(pools) };
}

const owner = (l: Lookups, accountId: string) => ({ account: l.accounts.get(accountId) ?? accountId, domainid: DOMAIN.id, domain: DOMAIN.name });
const zone = { zoneid: ZONE.id, zonename: ZONE.name };

/** CloudStack's Snapshot.State as a CloudStack client expects it: an async backup waiting for its copy is BackingUp. */
export function csSnapshotState(s: Pick<SnapshotView, 'state' | 'asyncBackup'>): string {
  return s.state === 'CreatedOnPrimary' && s.asyncBackup ? 'BackingUp' : s.state;
}

export function snapshotResponse(s: SnapshotView, volume: VolumeView | undefined, l: Lookups, tags: Array<Record<string, string>> = []) {
  const image = s.storeRefs.find((r) => r.role === 'Image' && r.state === 'Ready');
  const primary = s.storeRefs.find((r) => r.role === 'Primary' && r.state === 'Ready');
  return {
    id: s.id,
    name: s.name,
    ...owner(l, s.accountId),
    snapshottype: 'MANUAL',
    intervaltype: 'MANUAL',
    volumeid: s.volumeId,
    volumename: volume?.name,
    volumetype: volume?.type,
    virtualmachineid: s.vmId ?? undefined,
    created: csDate(s.createdAt),
    state: csSnapshotState(s),
    physicalsize: image?.sizeBytes ?? primary?.sizeBytes ?? 0,
    virtualsize: volume?.sizeBytes ?? s.backup.bytesTotal,
    ...zone,
    revertable: s.state === 'BackedUp' && primary !== undefined && volume !== undefined,
    locationtype: image ? 'SECONDARY' : 'PRIMARY',
    tags: tags.map((t) => ({ key: t.key, value: t.value, resourcetype: 'Snapshot', resourceid: s.id, ...owner(l, s.accountId) })),
    // volsnap's own: the exact state and the background backup's progress.
    volsnapstate: s.state,
    asyncbackup: s.asyncBackup,
    backupattempts: s.backup.attempts,
    backupmaxattempts: s.backup.maxAttempts,
    backupretryinterval: s.backup.retryIntervalSeconds,
    backupbytesdone: s.backup.bytesDone,
    backupbytestotal: s.backup.bytesTotal,
    backuplasterror: s.backup.lastError ?? undefined,
    backupnextattemptat: csDate(s.backup.nextAttemptAt),
    workflowid: s.workflowId,
  };
}

/** CloudStack's volume states: the transitional ones keep their names, Destroyed reads Destroy. */
const VOLUME_STATE: Record<string, string> = { Destroyed: 'Destroy' };

export function volumeResponse(v: VolumeView, vm: VmView | undefined, l: Lookups) {
  const pool = l.pools.get(v.poolId);
  return {
    id: v.id,
    name: v.name,
    ...owner(l, v.accountId),
    ...zone,
    type: v.type,
    deviceid: v.deviceId ?? undefined,
    virtualmachineid: v.vmId ?? undefined,
    vmname: vm?.name,
    vmdisplayname: vm?.name,
    vmstate: vm?.state,
    size: v.sizeBytes,
    created: csDate(v.createdAt),
    state: VOLUME_STATE[v.state] ?? v.state,
    storageid: v.poolId,
    storage: pool?.name,
    storagetype: 'shared',
    hypervisor: v.hypervisor,
    format: v.format.toUpperCase(),
    path: v.path,
    destroyed: v.state === 'Destroyed',
    isextractable: false,
    quiescevm: false,
    tags: [],
  };
}

export function vmResponse(vm: VmView, l: Lookups) {
  const offering = vm.serviceOfferingId ? l.offerings.get(vm.serviceOfferingId) : undefined;
  const host = vm.hostId ? l.hosts.get(vm.hostId) : undefined;
  const iso = vm.isoId ? l.isos.get(vm.isoId) : undefined;
  const template = TEMPLATES.find((t) => t.hypervisor === vm.hypervisor)!;
  return {
    id: vm.id,
    name: vm.name,
    displayname: vm.name,
    ...owner(l, vm.accountId),
    created: csDate(vm.createdAt),
    state: vm.state,
    haenable: false,
    ...zone,
    hostid: host?.id,
    hostname: host?.name,
    templateid: template.id,
    templatename: template.name,
    templatedisplaytext: template.name,
    serviceofferingid: offering?.id,
    serviceofferingname: offering?.name,
    cpunumber: offering?.cpuCount,
    memory: offering?.memoryMb,
    isoid: iso?.id,
    isoname: iso?.name,
    isodisplaytext: iso?.name,
    hypervisor: vm.hypervisor,
    rootdeviceid: 0,
    rootdevicetype: 'ROOT',
    guestosid: undefined,
    nic: [],
    securitygroup: [],
    affinitygroup: [],
    tags: [],
    // volsnap: the attached volumes, so a client need not list them apart.
    volumes: vm.volumes.map((v) => ({ id: v.id, name: v.name, type: v.type, deviceid: v.deviceId ?? undefined, size: v.sizeBytes, state: VOLUME_STATE[v.state] ?? v.state })),
  };
}

export function zoneResponse() {
  return {
    id: ZONE.id,
    name: ZONE.name,
    description: 'volsnap: every storage pool, host and image store',
    networktype: 'Advanced',
    allocationstate: 'Enabled',
    dhcpprovider: 'VirtualRouter',
    localstorageenabled: false,
    securitygroupsenabled: false,
    zonetoken: ZONE.id,
    tags: [],
  };
}

export function serviceOfferingResponse(o: ServiceOfferingRecord) {
  return {
    id: o.id,
    name: o.name,
    displaytext: `${o.name}: ${o.cpuCount} CPU, ${o.memoryMb} MB RAM`,
    cpunumber: o.cpuCount,
    cpuspeed: 1000,
    memory: o.memoryMb,
    storagetype: 'shared',
    offerha: false,
    limitcpuuse: false,
    issystem: false,
    defaultuse: false,
    iscustomized: false,
  };
}

export function diskOfferingResponse(d: (typeof DISK_OFFERINGS)[number]) {
  return {
    id: d.id,
    name: d.name,
    displaytext: d.custom ? 'Custom size (size parameter, GB)' : `${d.name}, ${d.sizeGb} GB`,
    disksize: d.sizeGb,
    iscustomized: d.custom,
    storagetype: 'shared',
    provisioningtype: 'thin',
    displayoffering: true,
  };
}

export function templateResponse(t: (typeof TEMPLATES)[number]) {
  return {
    id: t.id,
    name: t.name,
    displaytext: `blank ${t.hypervisor} disk (${t.sizeGb} GB ROOT)`,
    ispublic: true,
    isfeatured: true,
    isready: true,
    isextractable: false,
    passwordenabled: false,
    crossZones: false,
    format: t.format,
    hypervisor: t.hypervisor,
    ostypename: t.ostypename,
    size: t.sizeGb * GiB,
    templatetype: 'BUILTIN',
    account: 'system',
    domainid: DOMAIN.id,
    domain: DOMAIN.name,
    created: '2025-01-01T00:00:00+0000',
    status: 'Download Complete',
    ...zone,
    tags: [],
  };
}

export function isoResponse(i: IsoRecord) {
  return {
    id: i.id,
    name: i.name,
    displaytext: i.name,
    ostypename: i.osType,
    ispublic: true,
    isfeatured: true,
    isready: true,
    bootable: true,
    isextractable: false,
    format: 'ISO',
    account: 'system',
    domainid: DOMAIN.id,
    domain: DOMAIN.name,
    status: 'Successfully Installed',
    ...zone,
    tags: [],
  };
}

export function hostResponse(h: HostView) {
  return { id: h.id, name: h.name, hypervisor: h.hypervisor, ipaddress: h.address, state: 'Up', resourcestate: 'Enabled', type: 'Routing', ...zone };
}

export function storagePoolResponse(p: StoragePoolRecord) {
  return { id: p.id, name: p.name, path: p.path, hypervisor: p.hypervisor, state: 'Up', type: p.hypervisor === 'KVM' ? 'Filesystem' : 'NetworkFilesystem', scope: 'ZONE', ...zone, tags: '' };
}

export function configurationResponse(s: SettingRow) {
  return {
    name: s.name,
    value: String(s.value),
    defaultvalue: String(s.defaultValue),
    description: s.description,
    category: s.name.startsWith('storage.') ? 'Storage' : 'Snapshots',
    component: 'volsnap',
    isdynamic: true,
    type: 'Number',
    scope: 'global',
  };
}

export function eventResponse(e: EventRow, l: Lookups) {
  return {
    id: String(e.id),
    type: e.type,
    level: e.level,
    description: e.description,
    ...(e.accountId ? owner(l, e.accountId) : { account: 'system', domainid: DOMAIN.id, domain: DOMAIN.name }),
    username: e.accountId ? l.accounts.get(e.accountId) : 'system',
    created: csDate(e.createdAt),
    state: 'Completed',
    resourcetype: e.resourceType,
    resourceid: e.resourceId,
  };
}

export function accountResponse(a: { id: string; name: string; role: 'admin' | 'user'; createdAt: string; disabled?: boolean }) {
  const admin = a.role === 'admin';
  const state = a.disabled ? 'disabled' : 'enabled';
  return {
    id: a.id,
    name: a.name,
    accounttype: admin ? 1 : 0,
    roletype: admin ? 'Admin' : 'User',
    rolename: admin ? 'Root Admin' : 'User',
    domainid: DOMAIN.id,
    domain: DOMAIN.name,
    state,
    created: csDate(a.createdAt),
    // One user per account: its id is the account's (registerUserKeys/getUserKeys take it).
    user: [{ id: a.id, username: a.name, accountid: a.id, account: a.name, accounttype: admin ? 1 : 0, roletype: admin ? 'Admin' : 'User', domainid: DOMAIN.id, domain: DOMAIN.name, state, created: csDate(a.createdAt) }],
  };
}

export function jobResponse(j: AsyncJobRecord, l: Lookups) {
  return {
    accountid: j.accountId,
    account: l.accounts.get(j.accountId),
    userid: j.accountId,
    cmd: j.cmd,
    jobstatus: j.status,
    jobprocstatus: 0,
    jobresultcode: j.resultCode,
    jobresulttype: j.resultType,
    ...(j.result !== null ? { jobresult: j.result } : {}),
    jobinstancetype: j.instanceType ?? undefined,
    jobinstanceid: j.instanceId ?? undefined,
    created: csDate(j.createdAt),
    completed: csDate(j.completedAt),
    jobid: j.id,
  };
}

/** Whether a caller sees resources of every account in a list (CloudStack: an admin with listall=true). */
export function listScope(caller: Caller, listAll: boolean | undefined, byId: boolean): string | null {
  if (caller.role !== 'admin') return caller.accountId;
  return listAll || byId ? null : caller.accountId;
}
