import type { Logger } from 'pino';
import { findAsyncJob, listAsyncJobs, searchEvents, snapshotIdByIdempotencyKey } from '../../services/cloudstack/store.js';
import type { Pool } from '../../db/pool.js';
import type { VmState } from '../../db/vms.js';
import { VmStateSchema } from '../schemas/vm.js';
import { ownerScope, type Caller } from '../../services/caller.js';
import type { Services } from '../../services/index.js';
import type { VmActionRequest } from '../../services/vms.js';
import type { SnapshotView, VmView, VolumeView } from '../../services/views.js';
import { ApiErrorCode, CloudStackError, CsErrorCode, paramError } from '../../services/cloudstack/errors.js';
import type { JobContext, JobOutcome, JobRunner } from '../../services/cloudstack/jobs.js';
import { cloudStackKeysOf, issueCloudStackKeys } from '../../services/cloudstack/keys.js';
import { UUID, listResponse, pageWindow, parseCsDate, type ParamSpec, type ParamValue } from './params.js';
import {
  DISK_OFFERINGS,
  TEMPLATES,
  ZONE,
  accountResponse,
  configurationResponse,
  diskOfferingResponse,
  eventResponse,
  hostResponse,
  isoResponse,
  jobResponse,
  listScope,
  serviceOfferingResponse,
  snapshotResponse,
  storagePoolResponse,
  templateResponse,
  vmResponse,
  volumeResponse,
  zoneResponse,
  type Lookups,
} from './views.js';

/*
 * The CloudStack commands volsnap speaks: names, parameters and response fields as CloudStack's, each a thin
 * translation onto the `Services` facade the REST routes use (same policy table, same workflows).
 */

const GiB = 1024 ** 3;
const API_VERSION = '4.20.0.0';

/** What a command runs with: the caller and the service layer. */
export interface CommandContext {
  services: Services;
  pool: Pool;
  caller: Caller;
  log: Logger;
  jobs: JobRunner;
  lookups(): Promise<Lookups>;
}

export type Params = Record<string, ParamValue | undefined>;

export interface AsyncSpec {
  /** CloudStack's command class, the job's `cmd`. */
  cmd: string;
  /** `jobinstancetype`. */
  instanceType: 'Snapshot' | 'Volume' | 'VirtualMachine';
  /** The parameter naming the instance acted on (`jobinstanceid`); creates report theirs while running. */
  instanceParam?: string;
  /** A create: the answer carries the new `id` with the `jobid`. */
  create?: boolean;
  /** Safe to run again after its API server went away (re-driven rather than failed). */
  redrivable?: boolean;
  /** Checks done before the job is accepted (CloudStack's own parameter/entity checks answer at once). */
  precheck?(ctx: CommandContext, p: Params): Promise<void>;
  run(ctx: CommandContext, p: Params, job: JobContext): Promise<JobOutcome>;
}

export interface CommandSpec {
  name: string;
  description: string;
  params: ParamSpec[];
  /** Admin-only: hidden from other callers and refused as unknown (432), as CloudStack's role checker does. */
  admin?: boolean;
  async?: AsyncSpec;
  sync?(ctx: CommandContext, p: Params): Promise<Record<string, unknown>>;
}

// --- parameter helpers -------------------------------------------------------------------------------

const P = {
  id: (description: string, required = true): ParamSpec => ({ name: 'id', type: 'uuid', required, description }),
  uuid: (name: string, description: string, required = false): ParamSpec => ({ name, type: 'uuid', required, description }),
  str: (name: string, description: string, required = false): ParamSpec => ({ name, type: 'string', required, description }),
  bool: (name: string, description: string): ParamSpec => ({ name, type: 'boolean', description }),
  long: (name: string, description: string, required = false): ParamSpec => ({ name, type: 'long', required, description }),
  int: (name: string, description: string): ParamSpec => ({ name, type: 'integer', description }),
};
const PAGING: ParamSpec[] = [
  P.str('keyword', 'List by keyword'),
  P.int('page', 'The page to list (with pagesize)'),
  P.int('pagesize', 'Entries per page (default 500 with page)'),
];
const LISTALL = P.bool('listall', 'Admins: list resources of every account, not only their own');

const s = (p: Params, k: string) => p[k] as string | undefined;
const b = (p: Params, k: string) => p[k] as boolean | undefined;
const n = (p: Params, k: string) => p[k] as number | undefined;

function page<T>(key: string, items: T[], p: Params): Record<string, unknown> {
  return listResponse(key, items, n(p, 'page'), n(p, 'pagesize'));
}

function matches(keyword: string | undefined, ...fields: Array<string | undefined>): boolean {
  if (!keyword) return true;
  const k = keyword.toLowerCase();
  return fields.some((f) => f?.toLowerCase().includes(k));
}

function byIds<T extends { id: string }>(items: T[], p: Params): T[] {
  const id = s(p, 'id');
  const ids = p.ids as string[] | undefined;
  if (id) items = items.filter((x) => x.id === id);
  if (ids?.length) items = items.filter((x) => ids.map((i) => i.toLowerCase()).includes(x.id));
  return items;
}

function requireZone(p: Params): void {
  const zoneId = s(p, 'zoneid');
  if (zoneId && zoneId !== ZONE.id) throw notFound('zone', zoneId);
}

const notFound = (what: string, id: string) =>
  new CloudStackError(ApiErrorCode.PARAM_ERROR, CsErrorCode.InvalidParameterValueException, `Unable to find ${what} with specified id ${id}`, [{ uuid: id, description: `${what}Id` }]);

// --- result helpers ----------------------------------------------------------------------------------

async function vmResult(ctx: CommandContext, vm: VmView): Promise<JobOutcome> {
  return { result: { virtualmachine: vmResponse(vm, await ctx.lookups()) }, instanceId: vm.id };
}

async function volumeResult(ctx: CommandContext, volume: VolumeView): Promise<JobOutcome> {
  const vm = volume.vmId ? await ctx.services.vms.get(ctx.caller, volume.vmId).catch(() => undefined) : undefined;
  return { result: { volume: volumeResponse(volume, vm, await ctx.lookups()) }, instanceId: volume.id };
}

async function snapshotObject(ctx: CommandContext, snap: SnapshotView, tags: Array<Record<string, string>> = []) {
  const volume = await ctx.services.volumes.get(ctx.caller, snap.volumeId).catch(() => undefined);
  return snapshotResponse(snap, volume, await ctx.lookups(), tags);
}

/** A VM action as an async command over `services.vms.act`. */
function vmAction(
  name: string,
  cmd: string,
  description: string,
  idParam: string,
  toAction: (p: Params, ctx: CommandContext) => VmActionRequest | Promise<VmActionRequest>,
  extra: ParamSpec[] = [],
): CommandSpec {
  return {
    name,
    description,
    params: [P.uuid(idParam, 'The ID of the virtual machine', true), ...extra],
    async: {
      cmd,
      instanceType: 'VirtualMachine',
      instanceParam: idParam,
      precheck: async (ctx, p) => void (await ctx.services.vms.get(ctx.caller, s(p, idParam)!)),
      run: async (ctx, p) => vmResult(ctx, await ctx.services.vms.act(ctx.caller, s(p, idParam)!, await toAction(p, ctx))),
    },
  };
}

const USER = 'org.apache.cloudstack.api.command.user';
const ADMIN = 'org.apache.cloudstack.api.command.admin';

// --- the commands ------------------------------------------------------------------------------------

export const COMMANDS: CommandSpec[] = [
  {
    name: 'listApis',
    description: 'lists all available apis on the server, provided by the Api Discovery plugin',
    params: [P.str('name', 'API name')],
    sync: async (ctx, p) => {
      const name = s(p, 'name');
      const apis = COMMANDS.filter((c) => (!c.admin || ctx.caller.role === 'admin') && (!name || c.name.toLowerCase() === name.toLowerCase()));
      if (name && !apis.length) throw paramError(`Api Discovery plugin was unable to find an api by that name or process any apis`);
      return listResponse('api', apis.map(apiResponse));
    },
  },
  {
    name: 'listCapabilities',
    description: 'Lists capabilities',
    params: [],
    sync: async () => ({
      capability: {
        cloudstackversion: API_VERSION,
        securitygroupsenabled: false,
        userpublictemplateenabled: false,
        supportELB: 'false',
        projectinviterequired: false,
        allowusercreateprojects: false,
        customdiskofferingminsize: 1,
        customdiskofferingmaxsize: 1024,
        regionsecondaryenabled: false,
        kvmsnapshotenabled: true,
        allowuserviewdestroyedvm: true,
        allowuserexpungerecovervm: false,
        dynamicrolesenabled: false,
        apilimitinterval: 1,
        apilimitmax: -1,
        // volsnap: snapshots return at once and back up in the background (createSnapshot asyncbackup).
        asyncbackupsupported: true,
      },
    }),
  },
  {
    name: 'listZones',
    description: 'Lists zones',
    params: [P.id('the ID of the zone', false), P.str('name', 'the name of the zone'), P.bool('available', 'true to list zones the caller may deploy in'), ...PAGING],
    sync: async (_ctx, p) => {
      const z = zoneResponse();
      const keep = (!s(p, 'id') || s(p, 'id') === z.id) && (!s(p, 'name') || s(p, 'name') === z.name) && matches(s(p, 'keyword'), z.name);
      return page('zone', keep ? [z] : [], p);
    },
  },
  {
    name: 'listServiceOfferings',
    description: 'Lists all available service offerings.',
    params: [P.id('ID of the service offering', false), P.str('name', 'name of the service offering'), ...PAGING],
    sync: async (ctx, p) => {
      const all = byIds(await ctx.services.catalogs.serviceOfferings(), p).filter((o) => (!s(p, 'name') || o.name === s(p, 'name')) && matches(s(p, 'keyword'), o.name));
      return page('serviceoffering', all.map(serviceOfferingResponse), p);
    },
  },
  {
    name: 'listDiskOfferings',
    description: 'Lists all available disk offerings.',
    params: [P.id('ID of the disk offering', false), P.str('name', 'name of the disk offering'), ...PAGING],
    sync: async (_ctx, p) => {
      const all = byIds([...DISK_OFFERINGS], p).filter((o) => (!s(p, 'name') || o.name === s(p, 'name')) && matches(s(p, 'keyword'), o.name));
      return page('diskoffering', all.map(diskOfferingResponse), p);
    },
  },
  {
    name: 'listTemplates',
    description: 'List all public, private, and privileged templates.',
    params: [
      P.str('templatefilter', 'featured, self, selfexecutable, sharedexecutable, executable, community or all', true),
      P.id('the template ID', false),
      P.str('name', 'the template name'),
      P.str('hypervisor', 'the hypervisor for which to restrict the search'),
      P.uuid('zoneid', 'list templates by zoneId'),
      ...PAGING,
    ],
    sync: async (_ctx, p) => {
      const filter = s(p, 'templatefilter')!.toLowerCase();
      if (!['featured', 'self', 'selfexecutable', 'sharedexecutable', 'executable', 'community', 'all'].includes(filter)) {
        throw paramError(`Unable to execute API command listtemplates due to invalid value. Invalid parameter templatefilter value=${s(p, 'templatefilter')}`);
      }
      const builtIn = ['featured', 'executable', 'all'].includes(filter);
      const all = byIds(builtIn ? [...TEMPLATES] : [], p).filter(
        (t) => (!s(p, 'name') || t.name === s(p, 'name')) && (!s(p, 'hypervisor') || t.hypervisor.toLowerCase() === s(p, 'hypervisor')!.toLowerCase()) && matches(s(p, 'keyword'), t.name),
      );
      return page('template', (s(p, 'zoneid') && s(p, 'zoneid') !== ZONE.id ? [] : all).map(templateResponse), p);
    },
  },
  {
    name: 'listIsos',
    description: 'Lists all available ISO files.',
    params: [P.id('list ISO by ID', false), P.str('name', 'list all ISOs by name'), P.str('isofilter', 'featured, self, executable, community or all'), P.bool('bootable', 'true to list bootable ISOs'), P.uuid('zoneid', 'the ID of the zone'), ...PAGING],
    sync: async (ctx, p) => {
      const all = byIds(await ctx.services.catalogs.isos(), p).filter((i) => (!s(p, 'name') || i.name === s(p, 'name')) && matches(s(p, 'keyword'), i.name));
      return page('iso', all.map(isoResponse), p);
    },
  },
  {
    name: 'listHosts',
    description: 'Lists hosts.',
    admin: true,
    params: [P.id('the id of the host', false), P.str('name', 'the name of the host'), P.str('hypervisor', 'hypervisor type of host'), P.str('type', 'the host type'), P.uuid('zoneid', 'the Zone ID'), ...PAGING],
    sync: async (ctx, p) => {
      const type = s(p, 'type');
      const all = byIds(await ctx.services.catalogs.hosts(), p).filter(
        (h) => (!s(p, 'name') || h.name === s(p, 'name')) && (!s(p, 'hypervisor') || h.hypervisor.toLowerCase() === s(p, 'hypervisor')!.toLowerCase()) && (!type || type.toLowerCase() === 'routing') && matches(s(p, 'keyword'), h.name),
      );
      return page('host', all.map(hostResponse), p);
    },
  },
  {
    name: 'listStoragePools',
    description: 'Lists storage pools.',
    admin: true,
    params: [P.id('the ID of the storage pool', false), P.str('name', 'the name of the storage pool'), P.uuid('zoneid', 'the Zone ID'), ...PAGING],
    sync: async (ctx, p) => {
      const all = byIds(await ctx.services.catalogs.storagePools(), p).filter((x) => (!s(p, 'name') || x.name === s(p, 'name')) && matches(s(p, 'keyword'), x.name));
      return page('storagepool', all.map(storagePoolResponse), p);
    },
  },

  // --- virtual machines ---
  {
    name: 'deployVirtualMachine',
    description: 'Creates and automatically starts a virtual machine based on a service offering, disk offering, and template.',
    params: [
      P.uuid('zoneid', 'availability zone for the virtual machine', true),
      P.uuid('serviceofferingid', 'the ID of the service offering for the virtual machine', true),
      P.uuid('templateid', 'the ID of the template for the virtual machine', true),
      P.uuid('diskofferingid', 'the ID of the disk offering for a data disk'),
      P.long('size', 'the size of the data disk in GB, for a custom disk offering'),
      P.long('rootdisksize', 'the ROOT disk size in GB (default: the template size)'),
      P.str('name', 'host name for the virtual machine'),
      P.str('displayname', 'an optional user generated name for the virtual machine'),
      P.bool('startvm', 'true by default; false deploys the VM Stopped'),
      P.str('hypervisor', 'the hypervisor (must match the template)'),
    ],
    async: {
      cmd: `${USER}.vm.DeployVMCmd`,
      instanceType: 'VirtualMachine',
      create: true,
      precheck: async (_ctx, p) => {
        requireZone(p);
        deployInput(p);
      },
      run: async (ctx, p) => {
        const vm = await ctx.services.vms.create(ctx.caller, { ...deployInput(p), start: b(p, 'startvm') !== false });
        return vmResult(ctx, vm);
      },
    },
  },
  {
    name: 'listVirtualMachines',
    description: 'List the virtual machines owned by the account.',
    params: [P.id('the ID of the virtual machine', false), { name: 'ids', type: 'list', description: 'the IDs of the virtual machines' }, P.str('name', 'name of the virtual machine'), P.str('state', 'state of the virtual machine'), P.uuid('hostid', 'the host ID'), P.uuid('zoneid', 'the availability zone ID'), LISTALL, ...PAGING],
    sync: async (ctx, p) => {
      const state = s(p, 'state');
      const stateFilter = state ? (VmStateSchema.options.find((x) => x.toLowerCase() === state.toLowerCase()) as VmState | undefined) : undefined;
      if (state && !stateFilter) return {};
      const scope = listScope(ctx.caller, b(p, 'listall'), Boolean(s(p, 'id')));
      let vms = byIds(await ctx.services.vms.list(ctx.caller, stateFilter ? { state: stateFilter } : {}), p);
      vms = vms.filter(
        (v) =>
          (scope === null || v.accountId === scope) &&
          (stateFilter || s(p, 'id') || v.state !== 'Destroyed') &&
          (!s(p, 'name') || v.name === s(p, 'name')) &&
          (!s(p, 'hostid') || v.hostId === s(p, 'hostid')) &&
          matches(s(p, 'keyword'), v.name),
      );
      if (s(p, 'zoneid') && s(p, 'zoneid') !== ZONE.id) vms = [];
      const l = await ctx.lookups();
      return page('virtualmachine', vms.map((v) => vmResponse(v, l)), p);
    },
  },
  vmAction('startVirtualMachine', `${USER}.vm.StartVMCmd`, 'Starts a virtual machine.', 'id', () => ({ action: 'start' }), [P.uuid('hostid', 'destination host (ignored)')]),
  vmAction('stopVirtualMachine', `${USER}.vm.StopVMCmd`, 'Stops a virtual machine.', 'id', (p) => ({ action: 'stop', forced: b(p, 'forced') === true }), [P.bool('forced', 'power the VM off at once instead of asking its guest to shut down')]),
  vmAction('rebootVirtualMachine', `${USER}.vm.RebootVMCmd`, 'Reboots a virtual machine.', 'id', () => ({ action: 'reboot' })),
  vmAction('destroyVirtualMachine', `${USER}.vm.DestroyVMCmd`, 'Destroys a virtual machine: its ROOT volume is deleted, data disks are detached.', 'id', () => ({ action: 'destroy' }), [P.bool('expunge', 'expunge at once (always, here)')]),
  vmAction('restoreVirtualMachine', `${USER}.vm.RestoreVMCmd`, 'Restore a VM to original template/ISO or new template/ISO (a fresh ROOT volume).', 'virtualmachineid', () => ({ action: 'reinstall' }), [P.uuid('templateid', 'an optional template Id (must be the VM\'s own)')]),
  vmAction('attachIso', `${USER}.iso.AttachIsoCmd`, 'Attaches an ISO to a virtual machine.', 'virtualmachineid', (p) => ({ action: 'attach-iso', isoId: s(p, 'id')! }), [P.id('the ID of the ISO file')]),
  vmAction('detachIso', `${USER}.iso.DetachIsoCmd`, 'Detaches any ISO file (if any) currently attached to a virtual machine.', 'virtualmachineid', () => ({ action: 'detach-iso' })),
  {
    ...vmAction('migrateVirtualMachine', `${ADMIN}.vm.MigrateVMCmd`, 'Attempts Migration of a VM to a different host.', 'virtualmachineid', async (p, ctx) => ({ action: 'migrate', hostId: s(p, 'hostid') ?? (await otherHost(ctx, s(p, 'virtualmachineid')!)) }), [P.uuid('hostid', 'destination host (default: another host of the hypervisor)')]),
    admin: true,
  },
  {
    name: 'changeServiceForVirtualMachine',
    description: "Changes the service offering for a virtual machine.",
    params: [P.id('The ID of the virtual machine'), P.uuid('serviceofferingid', 'the service offering ID to apply to the virtual machine', true)],
    sync: async (ctx, p) => {
      const vm = await ctx.services.vms.act(ctx.caller, s(p, 'id')!, { action: 'change-service-offering', serviceOfferingId: s(p, 'serviceofferingid')! });
      return { virtualmachine: vmResponse(vm, await ctx.lookups()) };
    },
  },
  {
    name: 'attachVolume',
    description: 'Attaches a disk volume to a virtual machine.',
    params: [P.id('the ID of the disk volume'), P.uuid('virtualmachineid', 'the ID of the virtual machine', true), P.long('deviceid', 'the device id (assigned in order here)')],
    async: {
      cmd: `${USER}.volume.AttachVolumeCmd`,
      instanceType: 'Volume',
      instanceParam: 'id',
      precheck: async (ctx, p) => {
        await ctx.services.volumes.get(ctx.caller, s(p, 'id')!);
        await ctx.services.vms.get(ctx.caller, s(p, 'virtualmachineid')!);
      },
      run: async (ctx, p) => {
        await ctx.services.vms.act(ctx.caller, s(p, 'virtualmachineid')!, { action: 'attach-volume', volumeId: s(p, 'id')! });
        return volumeResult(ctx, await ctx.services.volumes.get(ctx.caller, s(p, 'id')!));
      },
    },
  },
  {
    name: 'detachVolume',
    description: 'Detaches a disk volume from a virtual machine.',
    params: [P.id('the ID of the disk volume', false), P.uuid('virtualmachineid', 'the ID of the virtual machine (with deviceid)'), P.long('deviceid', 'the device ID on the virtual machine (with virtualmachineid)')],
    async: {
      cmd: `${USER}.volume.DetachVolumeCmd`,
      instanceType: 'Volume',
      instanceParam: 'id',
      precheck: async (ctx, p) => void (await detachTarget(ctx, p)),
      run: async (ctx, p) => {
        const volume = await detachTarget(ctx, p);
        await ctx.services.vms.act(ctx.caller, volume.vmId!, { action: 'detach-volume', volumeId: volume.id });
        return volumeResult(ctx, await ctx.services.volumes.get(ctx.caller, volume.id));
      },
    },
  },

  // --- volumes ---
  {
    name: 'listVolumes',
    description: 'Lists all volumes.',
    params: [P.id('the ID of the disk volume', false), { name: 'ids', type: 'list', description: 'the IDs of the volumes' }, P.uuid('virtualmachineid', 'the ID of the virtual machine'), P.str('type', 'the type of disk volume (ROOT or DATADISK)'), P.str('name', 'the name of the disk volume'), P.uuid('zoneid', 'the ID of the availability zone'), LISTALL, ...PAGING],
    sync: async (ctx, p) => {
      const type = s(p, 'type')?.toUpperCase();
      if (type && type !== 'ROOT' && type !== 'DATADISK') return {};
      const scope = listScope(ctx.caller, b(p, 'listall'), Boolean(s(p, 'id')));
      let volumes = byIds(
        await ctx.services.volumes.list(ctx.caller, { ...(s(p, 'virtualmachineid') ? { vmId: s(p, 'virtualmachineid')! } : {}), ...(type ? { type: type as 'ROOT' | 'DATADISK' } : {}) }),
        p,
      );
      volumes = volumes.filter((v) => (scope === null || v.accountId === scope) && (!s(p, 'name') || v.name === s(p, 'name')) && matches(s(p, 'keyword'), v.name));
      if (s(p, 'zoneid') && s(p, 'zoneid') !== ZONE.id) volumes = [];
      const vms = new Map((await ctx.services.vms.list(ctx.caller)).map((v) => [v.id, v]));
      const l = await ctx.lookups();
      return page('volume', volumes.map((v) => volumeResponse(v, v.vmId ? vms.get(v.vmId) : undefined, l)), p);
    },
  },
  {
    name: 'createVolume',
    description: 'Creates a disk volume from a disk offering, or from a snapshot (its backup in the image store).',
    params: [
      P.str('name', 'the name of the disk volume'),
      P.uuid('zoneid', 'the ID of the availability zone'),
      P.uuid('diskofferingid', 'the ID of the disk offering (without snapshotid)'),
      P.long('size', 'arbitrary volume size in GB, for a custom disk offering'),
      P.uuid('snapshotid', 'the snapshot ID for the disk volume'),
      P.uuid('virtualmachineid', 'the ID of the virtual machine to attach the volume to'),
    ],
    async: {
      cmd: `${USER}.volume.CreateVolumeCmd`,
      instanceType: 'Volume',
      create: true,
      precheck: async (ctx, p) => {
        requireZone(p);
        if (s(p, 'snapshotid')) await ctx.services.snapshots.get(ctx.caller, s(p, 'snapshotid')!);
        else volumeSizeBytes(p);
        if (s(p, 'virtualmachineid')) await ctx.services.vms.get(ctx.caller, s(p, 'virtualmachineid')!);
      },
      run: async (ctx, p, job) => {
        const name = s(p, 'name');
        let volume = s(p, 'snapshotid')
          ? await ctx.services.snapshots.createVolume(ctx.caller, s(p, 'snapshotid')!, name ? { name } : {})
          : await ctx.services.volumes.create(ctx.caller, { name: name ?? `volume-${job.jobId.slice(0, 8)}`, sizeBytes: volumeSizeBytes(p) });
        job.reportId(volume.id);
        if (s(p, 'virtualmachineid')) {
          await ctx.services.vms.act(ctx.caller, s(p, 'virtualmachineid')!, { action: 'attach-volume', volumeId: volume.id });
          volume = await ctx.services.volumes.get(ctx.caller, volume.id);
        }
        return volumeResult(ctx, volume);
      },
    },
  },
  {
    name: 'deleteVolume',
    description: 'Deletes a detached disk volume.',
    params: [P.id('The ID of the disk volume')],
    sync: async (ctx, p) => {
      await ctx.services.volumes.delete(ctx.caller, s(p, 'id')!);
      return { success: true };
    },
  },
  {
    name: 'resizeVolume',
    description: 'Resizes a volume.',
    params: [P.id('the ID of the disk volume'), P.long('size', 'New volume size in GB'), P.uuid('diskofferingid', 'new disk offering id'), P.bool('shrinkok', 'Verify OK to Shrink')],
    async: {
      cmd: `${USER}.volume.ResizeVolumeCmd`,
      instanceType: 'Volume',
      instanceParam: 'id',
      precheck: async (ctx, p) => {
        volumeSizeBytes(p);
        await ctx.services.volumes.get(ctx.caller, s(p, 'id')!);
      },
      run: async (ctx, p) => volumeResult(ctx, await ctx.services.volumes.resize(ctx.caller, s(p, 'id')!, { sizeBytes: volumeSizeBytes(p), shrinkOk: b(p, 'shrinkok') ?? false })),
    },
  },
  {
    name: 'migrateVolume',
    description: 'Migrate volume to another storage pool',
    params: [P.uuid('volumeid', 'the ID of the volume', true), P.uuid('storageid', 'destination storage pool ID to migrate the volume to', true), P.bool('livemigrate', 'if the volume should be live migrated when it is attached to a running vm')],
    async: {
      cmd: `${USER}.volume.MigrateVolumeCmd`,
      instanceType: 'Volume',
      instanceParam: 'volumeid',
      precheck: async (ctx, p) => void (await ctx.services.volumes.get(ctx.caller, s(p, 'volumeid')!)),
      run: async (ctx, p) => volumeResult(ctx, await ctx.services.volumes.migrate(ctx.caller, s(p, 'volumeid')!, { poolId: s(p, 'storageid')! })),
    },
  },

  // --- snapshots ---
  {
    name: 'createSnapshot',
    description:
      'Creates an instant snapshot of a volume. With asyncbackup=true the job completes as soon as the snapshot exists on primary storage (state BackingUp) and the backup to secondary storage runs in the background; without, when it is BackedUp.',
    params: [
      P.uuid('volumeid', 'The ID of the disk volume', true),
      P.str('name', 'the name of the snapshot'),
      P.bool('asyncbackup', 'asynchronous backup if true'),
      P.bool('quiescevm', 'quiesce vm if true (accepted; qcow2 snapshots here are crash-consistent)'),
      { name: 'tags', type: 'map', description: 'Map of tags (key/value pairs), shown in the job result' },
      P.uuid('policyid', 'policy id of the snapshot, if this is null, then use MANUAL_POLICY (accepted)'),
      P.str('locationtype', 'Currently applicable only for managed storage (accepted)'),
    ],
    async: {
      cmd: `${USER}.snapshot.CreateSnapshotCmd`,
      instanceType: 'Snapshot',
      create: true,
      // The idempotency key is the job's: run again, it returns the same snapshot.
      redrivable: true,
      precheck: async (ctx, p) => void (await ctx.services.volumes.get(ctx.caller, s(p, 'volumeid')!)),
      run: async (ctx, p, job) => {
        const idempotencyKey = `cs-job-${job.jobId}`;
        let done = false;
        // The snapshot row exists a moment after the request starts: answer {id, jobid} then.
        const probe = (async () => {
          while (!done) {
            const id = await snapshotIdByIdempotencyKey(ctx.pool, idempotencyKey).catch(() => undefined);
            if (id) return job.reportId(id);
            await new Promise((r) => setTimeout(r, 20));
          }
        })();
        try {
          const { snapshot } = await ctx.services.snapshots.take(ctx.caller, s(p, 'volumeid')!, {
            asyncBackup: b(p, 'asyncbackup') ?? false,
            idempotencyKey,
            ...(s(p, 'name') ? { name: s(p, 'name')! } : {}),
          });
          return { result: { snapshot: await snapshotObject(ctx, snapshot, (p.tags as Array<Record<string, string>> | undefined) ?? []) }, instanceId: snapshot.id };
        } finally {
          done = true;
          await probe;
        }
      },
    },
  },
  {
    name: 'listSnapshots',
    description: 'Lists all available snapshots for the account.',
    params: [
      P.id('lists snapshot by snapshot ID', false),
      { name: 'ids', type: 'list', description: 'the IDs of the snapshots' },
      P.uuid('volumeid', 'the ID of the disk volume'),
      P.str('name', 'lists snapshot by snapshot name'),
      P.str('snapshottype', 'valid values are MANUAL or RECURRING'),
      P.str('intervaltype', 'valid values are HOURLY, DAILY, WEEKLY, and MONTHLY'),
      P.uuid('zoneid', 'list snapshots by zone id'),
      LISTALL,
      ...PAGING,
    ],
    sync: async (ctx, p) => {
      const type = s(p, 'snapshottype')?.toUpperCase();
      if ((type && type !== 'MANUAL') || (s(p, 'zoneid') && s(p, 'zoneid') !== ZONE.id) || (s(p, 'intervaltype') && s(p, 'intervaltype')!.toUpperCase() !== 'MANUAL')) return {};
      const scope = listScope(ctx.caller, b(p, 'listall'), Boolean(s(p, 'id')));
      // id and ids narrow together; ids that are not UUIDs match nothing (as before, when filtered in memory).
      let ids: string[] | undefined = s(p, 'id') ? [s(p, 'id')!] : undefined;
      const listed = (p.ids as string[] | undefined)?.map((i) => i.toLowerCase());
      if (listed?.length) ids = ids ? ids.filter((i) => listed.includes(i.toLowerCase())) : listed;
      ids = ids?.filter((i) => UUID.test(i));
      if (ids && ids.length === 0) return {};
      // One page in SQL, with the total count (CloudStack's page/pagesize; without them its default page size, 500).
      const { count, items } = await ctx.services.snapshots.search(ctx.caller, {
        ownerId: scope,
        ...(ids ? { ids } : {}),
        ...(s(p, 'volumeid') ? { volumeId: s(p, 'volumeid')! } : {}),
        ...(s(p, 'name') ? { name: s(p, 'name')! } : {}),
        ...(s(p, 'keyword') ? { keyword: s(p, 'keyword')! } : {}),
        ...pageWindow(n(p, 'page'), n(p, 'pagesize')),
      });
      if (count === 0) return {};
      const volumes = new Map((await ctx.services.volumes.getMany(ctx.caller, [...new Set(items.map((x) => x.volumeId))])).map((v) => [v.id, v]));
      const l = await ctx.lookups();
      return items.length ? { count, snapshot: items.map((x) => snapshotResponse(x, volumes.get(x.volumeId), l)) } : { count };
    },
  },
  {
    name: 'deleteSnapshot',
    description: 'Deletes a snapshot of a disk volume.',
    params: [P.id('The ID of the snapshot')],
    async: {
      cmd: `${USER}.snapshot.DeleteSnapshotCmd`,
      instanceType: 'Snapshot',
      instanceParam: 'id',
      precheck: async (ctx, p) => void (await ctx.services.snapshots.get(ctx.caller, s(p, 'id')!)),
      run: async (ctx, p) => {
        await ctx.services.snapshots.delete(ctx.caller, s(p, 'id')!);
        return { result: { success: true }, instanceId: s(p, 'id')! };
      },
    },
  },
  {
    name: 'revertSnapshot',
    description: 'This is supposed to revert a volume snapshot. The volume\'s VM must be stopped.',
    params: [P.id('The ID of the snapshot')],
    async: {
      cmd: `${USER}.snapshot.RevertSnapshotCmd`,
      instanceType: 'Snapshot',
      instanceParam: 'id',
      precheck: async (ctx, p) => void (await ctx.services.snapshots.get(ctx.caller, s(p, 'id')!)),
      run: async (ctx, p) => {
        await ctx.services.snapshots.revert(ctx.caller, s(p, 'id')!);
        return { result: { snapshot: await snapshotObject(ctx, await ctx.services.snapshots.get(ctx.caller, s(p, 'id')!)) }, instanceId: s(p, 'id')! };
      },
    },
  },

  // --- configuration, events, accounts, keys, jobs ---
  {
    name: 'listConfigurations',
    description: 'Lists all configurations.',
    params: [P.str('name', 'lists configuration by name'), P.str('category', 'lists configurations by category'), ...PAGING],
    sync: async (ctx, p) => {
      const rows = (await ctx.services.configurations.list())
        .map(configurationResponse)
        .filter((c) => matches(s(p, 'name'), c.name) && (!s(p, 'category') || c.category.toLowerCase() === s(p, 'category')!.toLowerCase()) && matches(s(p, 'keyword'), c.name, c.description, c.category));
      return page('configuration', rows, p);
    },
  },
  {
    name: 'updateConfiguration',
    description: 'Updates a configuration (applies to snapshots requested after the change).',
    admin: true,
    params: [P.str('name', 'the name of the configuration', true), P.str('value', 'the value of the configuration')],
    sync: async (ctx, p) => {
      if (s(p, 'value') === undefined) throw paramError('Unable to execute API command updateconfiguration due to missing parameter value');
      const row = await ctx.services.configurations.update(ctx.caller, s(p, 'name')!, s(p, 'value')!).catch((err: unknown) => {
        if (err instanceof Error && err.name === 'NotFoundError') throw paramError(`Configuration ${s(p, 'name')} not found`);
        throw err;
      });
      return { configuration: configurationResponse(row) };
    },
  },
  {
    name: 'listEvents',
    description: 'A command to list events.',
    params: [P.str('id', 'the ID of the event'), P.str('type', 'the event type (see event types)'), P.str('level', 'the event level (INFO, WARN, ERROR)'), { name: 'startdate', type: 'date', description: 'the start date range of the list you want to retrieve (use format "yyyy-MM-dd" or "yyyy-MM-dd HH:mm:ss")' }, { name: 'enddate', type: 'date', description: 'the end date range of the list you want to retrieve (use format "yyyy-MM-dd" or "yyyy-MM-dd HH:mm:ss")' }, LISTALL, ...PAGING],
    sync: async (ctx, p) => {
      const id = s(p, 'id');
      if (id !== undefined && !/^\d{1,18}$/.test(id)) return {};
      const { count, events } = await searchEvents(ctx.pool, {
        ownerId: listScope(ctx.caller, b(p, 'listall'), id !== undefined),
        ...(id !== undefined ? { id: Number(id) } : {}),
        ...(s(p, 'type') ? { type: s(p, 'type')! } : {}),
        ...(s(p, 'level') ? { level: s(p, 'level')!.toUpperCase() } : {}),
        ...(s(p, 'keyword') ? { keyword: s(p, 'keyword')! } : {}),
        ...(s(p, 'startdate') ? { startDate: new Date(parseCsDate(s(p, 'startdate')!)) } : {}),
        ...(s(p, 'enddate') ? { endDate: new Date(parseCsDate(s(p, 'enddate')!)) } : {}),
        ...pageWindow(n(p, 'page'), n(p, 'pagesize')),
      });
      if (!count) return {};
      const l = await ctx.lookups();
      return { count, event: events.map((e) => eventResponse(e, l)) };
    },
  },
  {
    name: 'listAccounts',
    description: 'Lists accounts and provides detailed account information for listed accounts',
    params: [P.id('list account by account ID', false), P.str('name', 'list account by account name'), LISTALL, ...PAGING],
    sync: async (ctx, p) => {
      const all = byIds(await ctx.services.accounts.list(), p).filter(
        (a) => (ctx.caller.role === 'admin' || a.id === ctx.caller.accountId) && (!s(p, 'name') || a.name === s(p, 'name')) && matches(s(p, 'keyword'), a.name),
      );
      return page('account', all.map(accountResponse), p);
    },
  },
  {
    name: 'registerUserKeys',
    description: 'This command allows a user to register for the developer API, returning a secret key and an API key. The previous pair stops working.',
    params: [P.id('User id (the account id here)')],
    sync: async (ctx, p) => {
      const id = keysOwner(ctx, s(p, 'id')!);
      const keys = await issueCloudStackKeys(ctx.pool, id);
      ctx.log.info({ accountId: id }, 'CloudStack key pair renewed');
      return { userkeys: { apikey: keys.apiKey, secretkey: keys.secretKey } };
    },
  },
  {
    name: 'getUserKeys',
    description: 'This command allows the user to query the secret and API keys for the account',
    params: [P.id('ID of the user whose keys are required (the account id here)')],
    sync: async (ctx, p) => {
      const id = keysOwner(ctx, s(p, 'id')!);
      const keys = await cloudStackKeysOf(ctx.pool, id);
      return keys ? { userkeys: { apikey: keys.apiKey, secretkey: keys.secretKey } } : {};
    },
  },
  {
    name: 'queryAsyncJobResult',
    description: 'Retrieves the current status of asynchronous job.',
    params: [P.uuid('jobid', 'the ID of the asynchronous job', true)],
    sync: async (ctx, p) => {
      const job = await findAsyncJob(ctx.pool, s(p, 'jobid')!, ownerScope(ctx.caller));
      if (!job) throw notFound('job', s(p, 'jobid')!);
      return jobResponse(job, await ctx.lookups());
    },
  },
  {
    name: 'listAsyncJobs',
    description: 'Lists all pending asynchronous jobs for the account.',
    params: [{ name: 'startdate', type: 'date', description: 'The start date of the async job (use format "yyyy-MM-dd" or "yyyy-MM-dd HH:mm:ss")' }, LISTALL, ...PAGING],
    sync: async (ctx, p) => {
      const { count, jobs } = await listAsyncJobs(ctx.pool, listScope(ctx.caller, b(p, 'listall'), false), {
        ...(s(p, 'startdate') ? { startDate: new Date(parseCsDate(s(p, 'startdate')!)).toISOString() } : {}),
        ...pageWindow(n(p, 'page'), n(p, 'pagesize')),
      });
      if (!count) return {};
      const l = await ctx.lookups();
      return { count, asyncjobs: jobs.map((j) => jobResponse(j, l)) };
    },
  },
];

/** Commands by lower-cased name. */
export const COMMANDS_BY_NAME = new Map(COMMANDS.map((c) => [c.name.toLowerCase(), c]));

/** An account may read and renew its own keys; an admin anyone's. */
function keysOwner(ctx: CommandContext, id: string): string {
  if (id !== ctx.caller.accountId && ctx.caller.role !== 'admin') throw notFound('user', id);
  return id;
}

/** The REST VM input for deployVirtualMachine's parameters (431 for what does not fit). */
function deployInput(p: Params) {
  const template = TEMPLATES.find((t) => t.id === s(p, 'templateid'));
  if (!template) throw notFound('template', s(p, 'templateid')!);
  const hypervisor = s(p, 'hypervisor');
  if (hypervisor && hypervisor.toLowerCase() !== template.hypervisor.toLowerCase()) {
    throw paramError(`Hypervisor ${hypervisor} does not match the template's hypervisor ${template.hypervisor}`);
  }
  const rootGb = n(p, 'rootdisksize') ?? template.sizeGb;
  if (rootGb < 1 || rootGb > 1024) throw paramError('Unable to execute API command deployvirtualmachine due to invalid value. Invalid parameter rootdisksize: 1 to 1024 GB');
  const dataDisks = s(p, 'diskofferingid') ? [{ sizeBytes: volumeSizeBytes(p) }] : [];
  const name = s(p, 'name') ?? s(p, 'displayname');
  return {
    name: name ?? `VM-${Math.random().toString(36).slice(2, 10)}`,
    hypervisor: template.hypervisor,
    serviceOffering: s(p, 'serviceofferingid')!,
    rootDiskSizeBytes: rootGb * GiB,
    dataDisks,
  };
}

/** The size a disk offering (or `size` in GB, for the custom one or a resize) gives. */
function volumeSizeBytes(p: Params): number {
  const offeringId = s(p, 'diskofferingid');
  const size = n(p, 'size');
  let gb: number | undefined;
  if (offeringId) {
    const offering = DISK_OFFERINGS.find((d) => d.id === offeringId);
    if (!offering) throw notFound('disk offering', offeringId);
    gb = offering.custom ? size : (size ?? offering.sizeGb);
    if (gb === undefined) throw paramError(`Unable to execute API command due to missing parameter size: disk offering ${offering.name} is custom-sized`);
  } else {
    gb = size;
    if (gb === undefined) throw paramError('Unable to execute API command due to missing parameter: either diskofferingid or size must be given');
  }
  if (gb < 1 || gb > 1024) throw paramError(`Unable to execute API command due to invalid value. Invalid parameter size value=${gb}: 1 to 1024 GB`);
  return gb * GiB;
}

/** migrateVirtualMachine without hostid: another host of the VM's hypervisor. */
async function otherHost(ctx: CommandContext, vmId: string): Promise<string> {
  const vm = await ctx.services.vms.get(ctx.caller, vmId);
  const host = (await ctx.services.catalogs.hosts()).find((h) => h.hypervisor === vm.hypervisor && h.id !== vm.hostId);
  if (!host) throw new CloudStackError(ApiErrorCode.INTERNAL_ERROR, CsErrorCode.CloudRuntimeException, `no other ${vm.hypervisor} host to migrate VM ${vm.id} to`, [{ uuid: vm.id, description: 'vmId' }]);
  return host.id;
}

/** detachVolume's volume: by id, or by virtualmachineid + deviceid. */
async function detachTarget(ctx: CommandContext, p: Params): Promise<VolumeView> {
  let volume: VolumeView | undefined;
  if (s(p, 'id')) volume = await ctx.services.volumes.get(ctx.caller, s(p, 'id')!);
  else if (s(p, 'virtualmachineid') && n(p, 'deviceid') !== undefined) {
    const vm = await ctx.services.vms.get(ctx.caller, s(p, 'virtualmachineid')!);
    volume = vm.volumes.find((v) => v.deviceId === n(p, 'deviceid'));
    if (!volume) throw paramError(`No volume with device id ${n(p, 'deviceid')} is attached to VM ${vm.id}`);
  } else throw paramError('Unable to execute API command detachvolume due to missing parameter: either id, or virtualmachineid and deviceid');
  if (!volume.vmId) throw paramError(`Volume ${volume.id} is not attached to a virtual machine`);
  return volume;
}

/** An entry of listApis: what CloudMonkey builds its command set from. */
function apiResponse(c: CommandSpec) {
  return {
    name: c.name,
    description: c.description,
    isasync: Boolean(c.async),
    related: '',
    since: '4.0.0',
    type: '',
    params: c.params.map((x) => ({ name: x.name, description: x.description, type: x.type, length: 255, required: Boolean(x.required), related: '', since: '' })),
    response: [],
  };
}
