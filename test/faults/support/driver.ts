/**
 * Drives the real service (`worker/main.ts`, i.e. `npm start`, through harness/service-process.ts) for the
 * fault matrix: one fresh data dir, free ports, a fixed admin key and a backup rate limit so copies take a few
 * seconds. Everything the cases do goes through the HTTP API, except the faults themselves (signals, files,
 * row locks that hold a snapshot at a step) and the reads that find the moment to inject them.
 */
import { execFile } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { restartablePort } from '../../../harness/ports.js';
import { spawnService, waitForHttp200, type ServiceProcess } from '../../../harness/service-process.js';

const exec = promisify(execFile);
export const MiB = 1024 * 1024;
export const ADMIN_KEY = 'fault-matrix-admin-key-0123456789abcdef';
/** 4 MiB/s over 16 MiB of data: a copy takes about 4 s. */
export const RATE = 4 * MiB;
export const DATA_BYTES = 16 * MiB;

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface SnapshotJson {
  id: string;
  state: string;
  volumeId: string;
  workflowId: string;
  backup: { attempts: number; lastError: string | null };
}

/** A process in the service's process group, from /proc. */
interface ProcInfo {
  pid: number;
  ppid: number;
  pgrp: number;
  comm: string;
  cmdline: string;
}

function processes(): ProcInfo[] {
  const out: ProcInfo[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const close = stat.lastIndexOf(')');
      const comm = stat.slice(stat.indexOf('(') + 1, close);
      const [, ppid, pgrp] = stat.slice(close + 2).split(' ');
      const cmdline = readFileSync(`/proc/${name}/cmdline`, 'utf8').replace(/\0/g, ' ');
      out.push({ pid: Number(name), ppid: Number(ppid), pgrp: Number(pgrp), comm, cmdline });
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

export class ServiceDriver {
  readonly dataDir: string;
  env!: Record<string, string>;
  proc: ServiceProcess | null = null;
  /** The test's own connection pool (fault timing, row locks); the auditor has its own. */
  pool!: pg.Pool;
  readonly logFile: string;

  constructor(name: string) {
    this.dataDir = mkdtempSync(join(tmpdir(), `volsnap-faults-${name}-`));
    // As root, embedded PostgreSQL runs as the `postgres` user, which must reach its files.
    chmodSync(this.dataDir, 0o755);
    this.logFile = join(this.dataDir, 'service-stdout.log');
  }

  get url(): string {
    return `http://127.0.0.1:${this.env.PORT}`;
  }
  get databaseUrl(): string {
    return `postgres://volsnap:volsnap-local@127.0.0.1:${this.env.EMBEDDED_PG_PORT}/volsnap`;
  }
  get temporalAddress(): string {
    return `127.0.0.1:${this.env.TEMPORAL_PORT}`;
  }
  /** Where the service's pause points (observability/pause-points.ts) are armed, reached and released. */
  get pausePointsDir(): string {
    return join(this.dataDir, 'pause-points');
  }
  get secondaryDir(): string {
    return join(this.dataDir, 'secondary');
  }

  async init(): Promise<void> {
    this.env = {
      VOLSNAP_DATA_DIR: this.dataDir,
      PORT: String(await restartablePort()),
      EMBEDDED_PG_PORT: String(await restartablePort()),
      TEMPORAL_PORT: String(await restartablePort()),
      TEMPORAL_UI_PORT: String(await restartablePort()),
      ADMIN_API_KEY: ADMIN_KEY,
      BACKUP_RATE_LIMIT_BYTES_PER_SEC: String(RATE),
      VOLSNAP_PAUSE_POINTS_DIR: this.pausePointsDir,
    };
    mkdirSync(this.pausePointsDir, { recursive: true });
    this.pool = new pg.Pool({ connectionString: this.databaseUrl, max: 4 });
    this.pool.on('error', () => undefined);
  }

  /** Starts `npm start`'s entry point; resolves when /healthz answers 200 (throws after `timeoutMs`). */
  async start(timeoutMs = 90_000): Promise<void> {
    this.proc = spawnService('worker/main.ts', this.env, this.logFile);
    const exited = new Promise<never>((_, reject) =>
      this.proc!.child.once('exit', (code, sig) => reject(new Error(`the service exited (${code ?? sig}) during start-up`))),
    );
    exited.catch(() => undefined);
    await Promise.race([waitForHttp200(`${this.url}/healthz`, timeoutMs), exited]);
  }

  running(): boolean {
    return !!this.proc && this.proc.child.exitCode === null && this.proc.child.signalCode === null;
  }

  async healthy(): Promise<boolean> {
    return fetch(`${this.url}/healthz`, { signal: AbortSignal.timeout(5000) }).then((r) => r.ok, () => false);
  }

  async killGroup(): Promise<void> {
    await this.proc?.killGroup();
  }

  /** SIGTERM the group; SIGKILL if it has not exited within `graceMs`. Returns the exit code (null if killed). */
  async terminate(graceMs = 40_000): Promise<number | null> {
    if (!this.proc || !this.running()) return this.proc?.child.exitCode ?? null;
    const stopping = this.proc.stop();
    const timedOut = await Promise.race([stopping.then(() => false), sleep(graceMs).then(() => true)]);
    if (timedOut) {
      await this.proc.killGroup();
      return null;
    }
    return stopping;
  }

  /** Brings the service back to healthy, whatever state it is in; a leftover of an earlier case must not spill over. */
  async ensureUp(): Promise<void> {
    if (this.running() && (await this.healthy())) return;
    if (this.running()) await this.terminate();
    for (let i = 0; ; i++) {
      try {
        await this.start();
        return;
      } catch (err) {
        await this.proc?.killGroup();
        if (i >= 2) throw err;
        await sleep(5000);
      }
    }
  }

  /** Processes of the service's process group (PostgreSQL, the Temporal dev server, the spawn helper). */
  groupProcesses(): ProcInfo[] {
    const pgid = this.proc?.child.pid;
    return pgid ? processes().filter((p) => p.pgrp === pgid) : [];
  }

  /** The dev server runs under a detached keeper (app/keeper.mjs), out of the service's group: find it by its data dir. */
  temporalPid(): number | undefined {
    const sqlite = join(this.dataDir, 'temporal.sqlite');
    return processes().find((p) => p.cmdline.includes('start-dev') && p.cmdline.includes(sqlite) && p.comm.startsWith('temporal'))?.pid;
  }

  postmasterPid(): number | undefined {
    const pidFile = join(this.dataDir, 'postgres', 'data', 'postmaster.pid');
    if (!existsSync(pidFile)) return undefined;
    return Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
  }

  // ---- HTTP API ----

  async call<T>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: T }> {
    const res = await fetch(`${this.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${ADMIN_KEY}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(120_000),
    });
    const text = await res.text();
    let json: unknown = text;
    try {
      json = JSON.parse(text);
    } catch {
      // not JSON
    }
    return { status: res.status, json: json as T };
  }

  async setConfig(name: string, value: number): Promise<void> {
    const r = await this.call('PUT', `/api/v1/configurations/${name}`, { value });
    if (r.status !== 200) throw new Error(`PUT configuration ${name}: ${r.status} ${JSON.stringify(r.json)}`);
  }

  async gc(): Promise<unknown> {
    const r = await this.call('POST', '/api/v1/storage/gc');
    if (r.status !== 200) throw new Error(`storage GC: ${r.status} ${JSON.stringify(r.json)}`);
    return r.json;
  }

  /** A VM with a 64 MiB data disk holding DATA_BYTES of data (so its backup takes a few seconds at RATE). */
  async createDataVolume(name: string, sizeBytes = 64 * MiB): Promise<{ vmId: string; volumeId: string; path: string; accountId: string }> {
    const r = await this.call<{ id: string; accountId: string; volumes: Array<{ id: string; type: string; path: string }> }>('POST', '/api/v1/vms', {
      name,
      hypervisor: 'KVM',
      rootDiskSizeBytes: 64 * MiB,
      dataDisks: [{ name: `${name}-data`, sizeBytes }],
    });
    if (r.status !== 201) throw new Error(`POST /vms: ${r.status} ${JSON.stringify(r.json)}`);
    const data = r.json.volumes.find((v) => v.type === 'DATADISK')!;
    await exec('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x5a 0 ${DATA_BYTES}`, data.path]);
    return { vmId: r.json.id, volumeId: data.id, path: data.path, accountId: r.json.accountId };
  }

  /** POST a snapshot with asyncBackup; the answer (or the error) is in the promise, not awaited by the caller. */
  requestSnapshot(volumeId: string, name: string): Promise<{ status: number; json: SnapshotJson } | { status: 0; error: string }> {
    return this.call<SnapshotJson>('POST', `/api/v1/volumes/${volumeId}/snapshots`, { name, asyncBackup: true }).catch((err: unknown) => ({
      status: 0 as const,
      error: String(err),
    }));
  }

  // ---- finding the moment ----

  async statusOf(volumeId: string): Promise<{ id: string; status: string; backup_attempts: number; last_error: string | null } | undefined> {
    const { rows } = await this.pool.query('SELECT id, status, backup_attempts, last_error FROM snapshots WHERE volume_id = $1 ORDER BY created DESC LIMIT 1', [
      volumeId,
    ]);
    return rows[0];
  }

  /** Backup files of a volume's snapshot in the image store (final and temporary names). */
  backupFiles(accountId: string, volumeId: string, snapshotId: string): { final: boolean; temp: boolean } {
    const dir = join(this.secondaryDir, 'snapshots', accountId, volumeId);
    let names: string[] = [];
    try {
      names = readdirSync(dir);
    } catch {
      // not there yet
    }
    return { final: names.includes(`${snapshotId}.qcow2`), temp: names.some((n) => n.startsWith(`${snapshotId}.qcow2.partial-`)) };
  }

  /**
   * Polls until `probe` answers, as fast as the database allows (a step may last a few milliseconds).
   */
  async until<T>(probe: () => Promise<T | undefined> | T | undefined, timeoutMs: number, what: string): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await probe();
      if (v !== undefined) return v;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await sleep(3);
    }
  }

  /**
   * Arms a pause point of the service for a volume: the service holds there when it gets to it (once), until
   * `release`. The step is reached by the service's own code path, not by timing.
   */
  arm(point: string, volumeId: string): void {
    writeFileSync(join(this.pausePointsDir, `${point}@${volumeId}.armed`), '');
  }

  /** Waits until the service holds at the armed point; answers what it wrote there. A point not reached throws. */
  async reached(point: string, volumeId: string, timeoutMs = 60_000): Promise<Record<string, unknown>> {
    const file = join(this.pausePointsDir, `${point}@${volumeId}.reached`);
    return this.until(
      () => {
        try {
          const text = readFileSync(file, 'utf8');
          return text ? (JSON.parse(text) as Record<string, unknown>) : undefined;
        } catch {
          return undefined;
        }
      },
      timeoutMs,
      `the service to reach pause point ${point}`,
    );
  }

  /** Lets a service held at the point go on (harmless when the process holding it is gone). */
  release(point: string, volumeId: string): void {
    writeFileSync(join(this.pausePointsDir, `${point}@${volumeId}.go`), '');
  }

  /** DELETE a snapshot; the answer (or the error) is in the promise. */
  deleteSnapshot(snapshotId: string): Promise<{ status: number; json: unknown } | { status: 0; error: string }> {
    return this.call('DELETE', `/api/v1/snapshots/${snapshotId}`).catch((err: unknown) => ({ status: 0 as const, error: String(err) }));
  }

  /**
   * Holds the snapshot's row lock (SELECT … FOR UPDATE), so the service's next transition of that row waits:
   * the snapshot stays at its current step until `release()`. Answers the status seen under the lock.
   */
  async holdRow(snapshotId: string): Promise<{ status: string; release(): Promise<void> }> {
    const client = await this.pool.connect();
    client.on('error', () => undefined);
    await client.query('BEGIN');
    const { rows } = await client.query('SELECT status FROM snapshots WHERE id = $1 FOR UPDATE', [snapshotId]);
    let released = false;
    return {
      status: rows[0]?.status,
      release: async () => {
        if (released) return;
        released = true;
        await client.query('ROLLBACK').catch(() => undefined);
        client.release(true);
      },
    };
  }

  /** The image store made unusable: its directory moved away and a plain file put in its place. */
  async breakImageStore(): Promise<() => Promise<void>> {
    const { mkdirSync, renameSync, writeFileSync, rmSync } = await import('node:fs');
    // A fresh data dir has no image store directory until the first backup.
    mkdirSync(this.secondaryDir, { recursive: true });
    const away = `${this.secondaryDir}.away`;
    renameSync(this.secondaryDir, away);
    writeFileSync(this.secondaryDir, 'not a directory\n');
    return async () => {
      rmSync(this.secondaryDir, { force: true });
      renameSync(away, this.secondaryDir);
    };
  }

  /** The service's last error-level log line since byte `from` of its stdout log (for a failed start-up). */
  lastError(from = 0): string {
    try {
      const lines = readFileSync(this.logFile, 'utf8').slice(from).split('\n').filter((l) => /"level":(50|60)/.test(l));
      const last = lines.at(-1);
      if (!last) return '';
      const j = JSON.parse(last) as { msg?: string; err?: { message?: string } };
      return `${j.msg ?? ''}${j.err?.message ? `: ${j.err.message}` : ' (no cause logged)'}`;
    } catch {
      return '';
    }
  }

  logSize(): number {
    try {
      return statSync(this.logFile).size;
    } catch {
      return 0;
    }
  }

  /** Stops the service; removes the data dir unless `keep` (kept for reading after a failure). */
  async close(keep = false): Promise<void> {
    await this.terminate().catch(() => undefined);
    await this.pool?.end().catch(() => undefined);
    if (!keep) rmSync(this.dataDir, { recursive: true, force: true });
  }
}
