/**
 * The compute driver over libvirt, through `virsh` (what CloudStack's agent itself spawns for blockcommit and
 * backups): no native addon to build, every call visible in `ps`, and the same text an operator sees. Each call
 * is one short process through the spawn helper (storage/exec.ts); the domain XML goes through a file.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import { CommandError, run } from '../storage/exec.js';
import { LibvirtError, type ComputeDriver, type PowerState } from './driver.js';
import { CDROM_TARGET, diskXml, domainName, domainXml, type DomainSpec } from './domain-xml.js';

export interface LibvirtDriverOptions {
  uri: string;
  /** Where domain XML files are written for virsh to read. */
  workDir: string;
  logger: Logger;
  /** Default wait for a guest shutdown before the forced power-off (CloudStack's stop timeout). */
  stopTimeoutMs?: number;
  virsh?: string;
}

const NO_DOMAIN = /failed to get domain|Domain not found|no domain with matching/i;
/** How long a call waits for a libvirtd that is restarting. */
const RECONNECT_MS = 20_000;
/** Nothing reached libvirt: any call may be sent again. */
const NOT_CONNECTED = /failed to connect to the hypervisor|Failed to connect socket/i;
/** The connection dropped during the call: only reads are sent again. */
const CONNECTION_LOST = /end of file|Cannot recv data|Connection reset by peer|Broken pipe|client socket is closed/i;
const TRAY_CLOSED = /Tray of the device is not open/i;
const READ_ONLY = new Set(['domstate', 'domblklist', 'list', 'dumpxml', 'version', 'domid', 'dominfo']);

export class LibvirtComputeDriver implements ComputeDriver {
  readonly uri: string;
  private readonly workDir: string;
  private readonly log: Logger;
  private readonly stopTimeoutMs: number;
  private readonly virshBin: string;
  /** Format node names by VM, QEMU pid and image file (internalSnapshot). */
  private readonly nodes = new Map<string, string>();

  constructor(opts: LibvirtDriverOptions) {
    this.uri = opts.uri;
    this.workDir = opts.workDir;
    this.log = opts.logger.child({ component: 'libvirt', uri: opts.uri });
    this.stopTimeoutMs = opts.stopTimeoutMs ?? 60_000;
    this.virshBin = opts.virsh ?? 'virsh';
  }

  async start(spec: DomainSpec): Promise<'started' | 'already-running'> {
    const state = await this.powerState(spec.vmId);
    if (state === 'running' || state === 'paused') return 'already-running';
    // A crashed or otherwise dead transient domain still named: gone before it is created again.
    if (state !== 'absent') await this.virsh(['destroy', domainName(spec.vmId)]).catch(ignoreNoDomain);
    await this.withXmlFile(domainXml(spec), (file) => this.virsh(['create', file])).catch(async (err: unknown) => {
      // libvirtd went away mid-call: the domain may have been created. Its state, once libvirt answers, says.
      if (!(err instanceof LibvirtError) || !CONNECTION_LOST.test(err.message)) throw err;
      const now = await this.powerState(spec.vmId);
      if (now !== 'running' && now !== 'paused') throw err;
    });
    this.log.info({ vmId: spec.vmId, accelerator: spec.accelerator }, 'domain started');
    return 'started';
  }

  async stop(vmId: string, opts: { forced?: boolean; timeoutMs?: number } = {}): Promise<'shut-down' | 'powered-off' | 'already-stopped'> {
    const name = domainName(vmId);
    if ((await this.powerState(vmId)) === 'absent') return 'already-stopped';
    if (!opts.forced) {
      const asked = await this.virsh(['shutdown', name, '--mode', 'acpi']).then(
        () => true,
        (err: unknown) => (isNoDomain(err) ? null : (this.log.warn({ err, vmId }, 'guest shutdown request failed; powering off'), false)),
      );
      if (asked === null) return 'already-stopped';
      const gone = async () => (await this.powerState(vmId)) === 'absent';
      if (asked && (await until(gone, opts.timeoutMs ?? this.stopTimeoutMs))) return 'shut-down';
      this.log.warn({ vmId }, 'the guest did not shut down in time; powering it off');
    }
    const off = await this.change(['destroy', name], async () => (await this.powerState(vmId)) === 'absent').then(
      () => true,
      (err: unknown) => (isNoDomain(err) ? false : Promise.reject(err)),
    );
    return off ? 'powered-off' : 'already-stopped';
  }

  async reboot(vmId: string): Promise<void> {
    // ACPI: libvirt powers the guest down and starts it again in the same QEMU (its "fake reboot"). A guest
    // that ignores ACPI is reset instead, as a real host's reset button would.
    const name = domainName(vmId);
    const running = async () => (await this.powerState(vmId)) === 'running';
    await this.change(['reboot', name, '--mode', 'acpi'], running).catch(async (err: unknown) => {
      if (isNoDomain(err)) throw new LibvirtError(`VM ${vmId} is not running`);
      this.log.warn({ err, vmId }, 'ACPI reboot refused; resetting the domain');
      await this.change(['reset', name], running);
    });
  }

  async attachDisk(vmId: string, disk: { path: string; target: string; volumeId: string }): Promise<void> {
    if ((await this.disks(vmId)).has(disk.target)) return;
    await this.withXmlFile(diskXml(disk.path, disk.target, disk.volumeId), (file) =>
      this.change(['attach-device', domainName(vmId), file, '--live'], async () => (await this.disks(vmId)).has(disk.target)),
    );
  }

  async detachDisk(vmId: string, target: string): Promise<void> {
    if (!(await this.disks(vmId)).has(target)) return;
    // libvirt waits a few seconds for the guest to release the device; a slow guest may take longer.
    // A request lost with its connection is checked by the wait below like any other.
    await this.change(['detach-disk', domainName(vmId), target, '--live'], async () => true);
    if (!(await until(async () => !(await this.disks(vmId)).has(target), 30_000))) {
      throw new LibvirtError(`the guest of VM ${vmId} did not release disk ${target}`);
    }
  }

  async changeMedia(vmId: string, isoPath: string | null): Promise<void> {
    const name = domainName(vmId);
    const args = isoPath ? ['change-media', name, CDROM_TARGET, isoPath, '--live', '--force'] : ['change-media', name, CDROM_TARGET, '--eject', '--live', '--force'];
    // A guest probing its CD-ROM (a booting kernel) can close the tray between libvirt's forced open and its
    // insert: QEMU then refuses the insert. Nothing changed; asked again once the guest has let go.
    for (let attempt = 1; ; attempt++) {
      try {
        await this.virsh(args);
        return;
      } catch (err) {
        if (!(err instanceof LibvirtError) || !TRAY_CLOSED.test(err.message) || attempt >= 20) throw err;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
  }

  async powerState(vmId: string): Promise<PowerState> {
    const out = await this.virsh(['domstate', domainName(vmId)]).catch((err: unknown) => (isNoDomain(err) ? null : Promise.reject(err)));
    return out === null ? 'absent' : toPowerState(out.trim());
  }

  async disks(vmId: string): Promise<Map<string, string>> {
    const out = await this.virsh(['domblklist', domainName(vmId)]).catch((err: unknown) => (isNoDomain(err) ? '' : Promise.reject(err)));
    const disks = new Map<string, string>();
    // -q: no header lines; "Target  Source" rows only.
    for (const line of out.split('\n')) {
      const m = /^\s*(\S+)\s+(.+?)\s*$/.exec(line);
      if (m && m[2] !== '-') disks.set(m[1]!, m[2]!);
    }
    return disks;
  }

  async list(): Promise<Map<string, PowerState>> {
    const out = await this.virsh(['list', '--all', '--name']);
    const states = new Map<string, PowerState>();
    for (const name of out.split('\n').map((l) => l.trim())) {
      const m = /^volsnap-([0-9a-f-]{36})$/.exec(name);
      if (m) states.set(m[1]!, await this.powerState(m[1]!));
    }
    return states;
  }

  async qemuPid(vmId: string): Promise<number | null> {
    if ((await this.powerState(vmId)) === 'absent') return null;
    // The qemu driver's pid file of a running domain (system instance).
    const pid = await readFile(`/run/libvirt/qemu/${domainName(vmId)}.pid`, 'utf8').catch(() => null);
    return pid ? Number(pid.trim()) : null;
  }

  async snapshotDiskLive(vmId: string, file: string, tag: string): Promise<'taken' | 'no-domain'> {
    return (await this.internalSnapshot('blockdev-snapshot-internal-sync', vmId, file, tag)) ? 'taken' : 'no-domain';
  }

  async snapshotDisksLive(vmId: string, disks: Array<{ file: string; tag: string }>): Promise<'taken' | 'no-domain'> {
    const blocks = (await this.qmp(vmId, 'query-block', {}).catch((err: unknown) => (isNoDomain(err) ? null : Promise.reject(err)))) as
      | Array<{ inserted?: { file?: string; 'node-name'?: string } }>
      | null;
    const nodes = disks.map((d) => blocks?.find((b) => b.inserted?.file === d.file)?.inserted?.['node-name']);
    if (nodes.some((n) => !n)) return 'no-domain';
    const actions = disks.map((d, i) => ({ type: 'blockdev-snapshot-internal-sync', data: { device: nodes[i], name: d.tag } }));
    await this.qmp(vmId, 'transaction', { actions });
    this.log.info({ vmId, disks, nodes }, 'internal snapshots of several disks taken at one instant by the running QEMU');
    return 'taken';
  }

  async deleteDiskSnapshotLive(vmId: string, file: string, tag: string): Promise<'deleted' | 'no-domain'> {
    return (await this.internalSnapshot('blockdev-snapshot-delete-internal-sync', vmId, file, tag)) ? 'deleted' : 'no-domain';
  }

  /**
   * One internal-snapshot command on the node QEMU opened `file` as; false when no running domain has it. The
   * node is remembered per QEMU process: libvirt never reuses a node name within a domain's life (a hot-plug
   * gets a new one), so one virsh call instead of two on the time-to-created path; a node QEMU no longer knows
   * (the disk unplugged and plugged again) is looked up again.
   */
  private async internalSnapshot(execute: string, vmId: string, file: string, tag: string): Promise<boolean> {
    const pid = await readFile(`/run/libvirt/qemu/${domainName(vmId)}.pid`, 'utf8').then((p) => p.trim(), () => null);
    const key = pid ? `${vmId}\0${pid}\0${file}` : null;
    const cached = key ? this.nodes.get(key) : undefined;
    const node = cached ?? (await this.formatNodeOf(vmId, file));
    if (!node) return false;
    try {
      await this.qmp(vmId, execute, { device: node, name: tag });
    } catch (err) {
      if (cached === undefined || !/Cannot find device|not found/i.test(String(err))) throw err;
      this.nodes.delete(key!);
      return this.internalSnapshot(execute, vmId, file, tag);
    }
    if (key && cached === undefined) {
      // An earlier QEMU of this VM (a restart) is gone with its names.
      for (const k of this.nodes.keys()) if (k.startsWith(`${vmId}\0`) && !k.startsWith(`${vmId}\0${pid}\0`)) this.nodes.delete(k);
      this.nodes.set(key, node);
    }
    this.log.info({ vmId, file, tag, node, command: execute }, 'internal snapshot changed by the running QEMU');
    return true;
  }

  /** The qcow2 (format) node QEMU opened `file` as, in the running domain; null without one. */
  private async formatNodeOf(vmId: string, file: string): Promise<string | null> {
    const blocks = (await this.qmp(vmId, 'query-block', {}).catch((err: unknown) => (isNoDomain(err) ? null : Promise.reject(err)))) as
      | Array<{ inserted?: { file?: string; 'node-name'?: string } }>
      | null;
    const hit = blocks?.find((b) => b.inserted?.file === file);
    return hit?.inserted?.['node-name'] ?? null;
  }

  /** One QMP command to the domain's QEMU through libvirt; its `return`, or a LibvirtError with QEMU's text. */
  private async qmp(vmId: string, execute: string, args: Record<string, unknown>): Promise<unknown> {
    const out = await this.virsh(['qemu-monitor-command', domainName(vmId), JSON.stringify({ execute, arguments: args })]);
    const reply = JSON.parse(out) as { return?: unknown; error?: { desc?: string } };
    if (reply.error) throw new LibvirtError(`QEMU refused ${execute}: ${reply.error.desc ?? 'unknown error'}`);
    return reply.return;
  }

  private async withXmlFile<T>(xml: string, fn: (file: string) => Promise<T>): Promise<T> {
    await mkdir(this.workDir, { recursive: true });
    const file = path.join(this.workDir, `domain-${randomUUID()}.xml`);
    await writeFile(file, xml, { mode: 0o600 });
    try {
      return await fn(file);
    } finally {
      await rm(file, { force: true });
    }
  }

  /**
   * A change whose connection may drop midway (libvirtd restarting): then `done` decides from the domain's
   * state, read once libvirt answers again, whether it happened; if not, the error stands.
   */
  private async change(args: string[], done: () => Promise<boolean>): Promise<string> {
    return this.virsh(args).catch(async (err: unknown) => {
      if (!(err instanceof LibvirtError) || !CONNECTION_LOST.test(err.message) || !(await done().catch(() => false))) throw err;
      this.log.warn({ command: args[0], err: err.message }, 'libvirt restarted during a change that took effect');
      return '';
    });
  }

  /**
   * One virsh call. libvirtd restarts (an upgrade, its keeper after a crash) while domains run on: a call that
   * could not connect is retried for up to RECONNECT_MS, as nothing reached libvirt; a read that lost its
   * connection midway is retried too. A change whose connection dropped midway is not (it may have happened):
   * its caller decides from the domain's state.
   */
  private async virsh(args: string[]): Promise<string> {
    const read = READ_ONLY.has(args[0]!) || (args[0] === 'qemu-monitor-command' && args[2]?.includes('"query-'));
    const deadline = Date.now() + RECONNECT_MS;
    for (let delay = 200, attempt = 1; ; attempt++, delay = Math.min(delay * 2, 2000)) {
      try {
        return (await run(this.virshBin, ['-q', '-c', this.uri, ...args])).stdout;
      } catch (err) {
        const e = libvirtError(err);
        const retry = NOT_CONNECTED.test(e.message) || (read && CONNECTION_LOST.test(e.message));
        if (!retry || Date.now() >= deadline) throw e;
        if (attempt === 1) this.log.warn({ command: args[0], err: e.message }, 'libvirt is not answering; retrying while it restarts');
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }
}

/** Polls `done` until it holds (true) or `ms` passes (false). */
async function until(done: () => Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await done()) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, 200));
  }
}

function toPowerState(s: string): PowerState {
  switch (s) {
    case 'running':
    case 'idle':
    case 'blocked':
      return 'running';
    case 'paused':
    case 'pmsuspended':
      return 'paused';
    case 'in shutdown':
      return 'shutting-down';
    case 'crashed':
      return 'crashed';
    case 'shut off':
      return 'absent';
    default:
      return 'other';
  }
}

/** libvirt's own error text ("error: ..." lines of virsh), the command line kept as the cause for the log. */
function libvirtError(err: unknown): Error {
  if (!(err instanceof CommandError)) return err instanceof Error ? err : new Error(String(err));
  const text = err.stderr
    .split('\n')
    .map((l) => l.replace(/^error:\s*/, '').trim())
    .filter(Boolean)
    .join('; ');
  return new LibvirtError(text || err.message, { cause: err });
}

function isNoDomain(err: unknown): boolean {
  return err instanceof Error && NO_DOMAIN.test(err.message);
}

function ignoreNoDomain(err: unknown): void {
  if (!isNoDomain(err)) throw err;
}
