/**
 * The process lifecycle of `npm start` with real processes and real PostgreSQL: Ctrl-C (SIGINT to the whole
 * process group) drains the workers while the embedded servers keep running, and they stop last; a restart on
 * the same data dir right after SIGKILL or SIGTERM becomes healthy; a second start on a data dir that a live
 * service owns is refused with a message naming the owner.
 */
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadEnv } from '../../config/env.js';
import { embeddedDatabaseUrl, portInUse } from '../../db/embedded.js';
import { createPool, type Pool } from '../../db/pool.js';
import { getSnapshot, getStoreRefs } from '../../db/snapshots.js';
import { silentLogger } from '../../observability/logger.js';
import { createSnapshotService } from '../../services/snapshots.js';
import { KvmStorageDriver } from '../../storage/kvm.js';
import { connectClient } from '../../temporal/connection.js';
import { eventually, insertAccount, insertVolume, sha256File, writePattern } from '../support/fixtures.js';
import { restartablePort } from '../../harness/ports.js';
import { spawnService, waitForHttp200, type ServiceProcess } from '../../harness/service-process.js';

const MiB = 1024 * 1024;

async function serviceEnv(dataDir: string, extra: Record<string, string> = {}) {
  return {
    VOLSNAP_DATA_DIR: dataDir,
    PORT: String(await restartablePort()),
    EMBEDDED_PG_PORT: String(await restartablePort()),
    TEMPORAL_PORT: String(await restartablePort()),
    TEMPORAL_UI_PORT: String(await restartablePort()),
    ...extra,
  };
}

function freshDataDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'volsnap-life-'));
  // As root, embedded PostgreSQL runs as the `postgres` user, which must reach its files.
  chmodSync(dir, 0o755);
  return dir;
}

/** The JSON log lines a service wrote to its stdout file. */
function logLines(file: string): Array<Record<string, any>> {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => {
      try {
        return JSON.parse(l) as Record<string, any>;
      } catch {
        return {};
      }
    });
}

/** Processes (other than ours) whose command line mentions the data dir: PostgreSQL, the dev server, keepers. */
function processesUsing(dataDir: string): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    if (Number(pid) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
      const state = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0];
      if (state !== 'Z' && cmd.includes(dataDir)) found.push(`${pid}: ${cmd.trim()}`);
    } catch {
      // gone meanwhile
    }
  }
  return found;
}

async function expectNothingLingers(dataDir: string, env: Record<string, string>, withinMs: number) {
  await eventually(
    async () => (processesUsing(dataDir).length === 0 ? true : undefined),
    withinMs,
    `no process of the data dir left (${processesUsing(dataDir).join('; ')})`,
  );
  expect(existsSync(join(dataDir, 'postgres', 'data', 'postmaster.pid'))).toBe(false);
  expect(await portInUse(Number(env.EMBEDDED_PG_PORT))).toBe(false);
  expect(await portInUse(Number(env.TEMPORAL_PORT))).toBe(false);
}

describe('Ctrl-C (SIGINT to the process group) while a backup copies', () => {
  const dataDir = freshDataDir();
  let env: Record<string, string>;
  let service: ServiceProcess | undefined;
  const log = join(dataDir, 'service-stdout.log');
  afterAll(async () => {
    await service?.killGroup();
    await eventually(async () => (processesUsing(dataDir).length === 0 ? true : undefined), 60_000, 'cleanup').catch(() => undefined);
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('answers 503 while draining, lets the copy finish, stops PostgreSQL and Temporal last and leaves nothing running', async () => {
    env = await serviceEnv(dataDir, { WORKER_SHUTDOWN_GRACE_SECONDS: '90', BACKUP_RATE_LIMIT_BYTES_PER_SEC: String(4 * MiB) });
    service = spawnService('worker/main.ts', env, log);
    await waitForHttp200(`http://127.0.0.1:${env.PORT}/healthz`);
    const pool: Pool = createPool(embeddedDatabaseUrl(Number(env.EMBEDDED_PG_PORT)));
    pool.on('error', () => undefined);
    const { client, connection } = await connectClient(loadEnv(env), { address: `127.0.0.1:${env.TEMPORAL_PORT}`, namespace: 'default' });
    const snapshots = createSnapshotService({ pool, client, taskQueue: 'volsnap', backupTaskQueue: 'volsnap-backup', logger: silentLogger });
    const accountId = await insertAccount(pool);
    const vol = await insertVolume(pool, new KvmStorageDriver(), { accountId, sizeBytes: 64 * MiB });
    // 32 MiB at 4 MiB/s: about 8 s of copying, well inside the grace.
    await writePattern(vol.path, 0x5a, 0, 32 * MiB);
    const { snapshot } = await snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: true });
    await eventually(async () => ((await getSnapshot(pool, snapshot.id))!.backupBytesDone > 0 ? true : undefined), 60_000, 'copy under way');
    await connection.close();

    const exited = new Promise<number | null>((r) => service!.child.once('exit', (code) => r(code)));
    process.kill(-service.child.pid!, 'SIGINT');

    // Draining: the API refuses with 503 in the usual error shape, health included.
    const health = await eventually(async () => {
      const r = await fetch(`http://127.0.0.1:${env.PORT}/healthz`).catch(() => null);
      return r?.status === 503 ? r : undefined;
    }, 10_000, '/healthz 503 while stopping');
    expect(health.headers.get('retry-after')).toMatch(/^\d+$/);
    expect(await health.json()).toMatchObject({ error: { code: 'SERVICE_UNAVAILABLE', message: expect.any(String) } });
    const api = await fetch(`http://127.0.0.1:${env.PORT}/api/v1/snapshots`);
    expect(api.status).toBe(503);
    expect(((await api.json()) as { error: { code: string } }).error.code).toBe('SERVICE_UNAVAILABLE');

    // The copy finishes during the drain with PostgreSQL still up: one attempt, no failure recorded.
    const done = await eventually(async () => {
      const s = await getSnapshot(pool, snapshot.id);
      return s && ['BackedUp', 'Error'].includes(s.status) ? s : undefined;
    }, 60_000, 'BackedUp during the drain');
    expect(done.status).toBe('BackedUp');
    expect(done.backupAttempts).toBe(1);
    await pool.end();

    expect(await exited).toBe(0);
    service = undefined;
    const lines = logLines(log);
    expect(lines.filter((l) => /ECONNREFUSED/.test(JSON.stringify(l)))).toEqual([]);
    expect(lines.filter((l) => l.level >= 50)).toEqual([]);
    const at = (msg: string) => lines.findIndex((l) => l.msg === msg);
    expect(at('workers stopped')).toBeGreaterThan(-1);
    expect(at('Temporal dev server stopped')).toBeGreaterThan(at('workers stopped'));
    expect(at('embedded PostgreSQL stopped')).toBeGreaterThan(at('workers stopped'));
    await expectNothingLingers(dataDir, env, 5_000);

    // Nothing is left to do after a restart: the backup stands as it was.
    service = spawnService('worker/main.ts', env, log);
    await waitForHttp200(`http://127.0.0.1:${env.PORT}/healthz`);
    const pool2 = createPool(embeddedDatabaseUrl(Number(env.EMBEDDED_PG_PORT)));
    try {
      const after = (await getSnapshot(pool2, snapshot.id))!;
      expect(after).toMatchObject({ status: 'BackedUp', backupAttempts: 1 });
      const image = (await getStoreRefs(pool2, snapshot.id)).find((r) => r.role === 'Image')!;
      expect(await sha256File(join(dataDir, 'secondary', image.installPath))).toBe(image.checksum);
    } finally {
      await pool2.end();
    }
    expect(await service.stop()).toBe(0);
    service = undefined;
  });
});

describe('restart at once on the same data dir, and one owner per data dir', () => {
  const dataDir = freshDataDir();
  let env: Record<string, string>;
  let service: ServiceProcess | undefined;
  const logs: string[] = [];
  const start = () => {
    const log = join(dataDir, `service-${logs.length + 1}.log`);
    logs.push(log);
    return { service: spawnService('worker/main.ts', env, log), log };
  };
  // Healthy, or fail at once with the start-up error if the service exits instead.
  const healthy = async (log?: string) => {
    const svc = service!;
    const exited = new Promise<never>((_, reject) =>
      svc.child.once('exit', (code) => {
        const fatal = log ? logLines(log).find((l) => l.level === 60) : undefined;
        reject(new Error(`service exited with ${code} before it was healthy: ${JSON.stringify(fatal ?? null)}`));
      }),
    );
    exited.catch(() => undefined);
    await Promise.race([waitForHttp200(`http://127.0.0.1:${env.PORT}/healthz`, 120_000), exited]);
  };
  beforeAll(async () => {
    env = await serviceEnv(dataDir);
  });
  afterAll(async () => {
    await service?.killGroup();
    await eventually(async () => (processesUsing(dataDir).length === 0 ? true : undefined), 60_000, 'cleanup').catch(() => undefined);
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('a second start on a data dir owned by a live service fails, naming the owner pid, and leaves the owner running', async () => {
    service = start().service;
    await healthy();
    const second = start();
    const code = await new Promise<number | null>((r) => second.service.child.once('exit', (c) => r(c)));
    expect(code).toBe(1);
    const fatal = logLines(second.log).find((l) => l.level === 60);
    expect(fatal?.msg).toBe('start-up failed');
    expect(fatal?.err?.message).toMatch(new RegExp(`in use by .*pid ${service.child.pid}\\b`));
    expect(fatal?.err?.stack).toBeTruthy();
    // The owner's servers were not touched.
    await healthy();
  });

  it('SIGKILL of the whole process group, then `npm start` at once: healthy', async () => {
    await service!.killGroup();
    const next = start();
    service = next.service;
    await healthy(next.log);
    expect(logLines(next.log).filter((l) => l.level >= 50)).toEqual([]);
  });

  it('SIGKILL of the service process alone (the OOM killer, say), then `npm start` at once: healthy, nothing of the old run left', async () => {
    const old = service!;
    process.kill(old.child.pid!, 'SIGKILL');
    await new Promise((r) => (old.child.exitCode !== null || old.child.signalCode !== null ? r(null) : old.child.once('exit', r)));
    const next = start();
    service = next.service;
    await healthy(next.log);
    expect(logLines(next.log).filter((l) => l.level >= 50)).toEqual([]);
    // Only the new service's servers run: one postmaster and one dev server for the data dir.
    const postmasters = processesUsing(dataDir).filter((p) => /\/postgres -D /.test(p));
    expect(postmasters).toHaveLength(1);
    expect(processesUsing(dataDir).filter((p) => /server start-dev/.test(p))).toHaveLength(1);
  });

  it('SIGTERM, then `npm start` at once: healthy', async () => {
    expect(await service!.stop()).toBe(0);
    const next = start();
    service = next.service;
    await healthy(next.log);
    expect(logLines(next.log).filter((l) => l.level >= 50)).toEqual([]);
  });

  it('after SIGKILL of the whole process group nothing lingers: PostgreSQL and the dev server are stopped', async () => {
    await service!.killGroup();
    service = undefined;
    await expectNothingLingers(dataDir, env, 45_000);
  });
});

describe('an embedded server killed under a running `npm start`', () => {
  const dataDir = freshDataDir();
  let env: Record<string, string>;
  let service: ServiceProcess | undefined;
  const log = join(dataDir, 'service-stdout.log');
  afterAll(async () => {
    await service?.killGroup();
    await eventually(async () => (processesUsing(dataDir).length === 0 ? true : undefined), 60_000, 'cleanup').catch(() => undefined);
    rmSync(dataDir, { recursive: true, force: true });
  });
  const status = () => fetch(`http://127.0.0.1:${env.PORT}/healthz`, { signal: AbortSignal.timeout(5000) }).then((r) => r.status, () => 0);
  const postmasterPid = () => Number(readFileSync(join(dataDir, 'postgres', 'data', 'postmaster.pid'), 'utf8').split('\n')[0]);
  const devServerPid = () => (JSON.parse(readFileSync(join(dataDir, 'temporal-dev-server.pid'), 'utf8')) as { pid: number }).pid;
  const alive = (pid: number) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  /**
   * Kills `pid`, waits for its keeper to start a new server (`current()` names another live pid), then for /healthz
   * to answer 200 (the pollers it checks are the workers polling the new server). /healthz may never fail for a
   * short Temporal outage: the client retries its calls while the frontend is unavailable. Returns the log lines
   * written meanwhile.
   */
  const killAndRecover = async (pid: number, what: string, current: () => number | undefined) => {
    const from = logLines(log).length;
    process.kill(pid, 'SIGKILL');
    const t0 = Date.now();
    let failed = false;
    const next = await eventually(async () => {
      if ((await status()) !== 200) failed = true;
      const p = current();
      return p && p !== pid && alive(p) ? p : undefined;
    }, 60_000, `${what} restarted by its keeper`);
    await eventually(async () => {
      if ((await status()) === 200) return true;
      failed = true;
      return undefined;
    }, 60_000, `/healthz 200 again after ${what} was killed`);
    console.log(`${what}: new pid after ${((Date.now() - t0) / 1000).toFixed(1)} s; /healthz ${failed ? 'failed meanwhile, ' : ''}200 again`);
    expect(alive(pid)).toBe(false);
    return { next, lines: logLines(log).slice(from) };
  };
  const tryRead = <T,>(fn: () => T) => {
    try {
      return fn();
    } catch {
      return undefined;
    }
  };

  it('PostgreSQL (SIGKILL of the postmaster), then the Temporal dev server: each is restarted by its keeper and /healthz comes back 200 without a restart; SIGTERM still stops everything', async () => {
    env = await serviceEnv(dataDir);
    service = spawnService('worker/main.ts', env, log);
    await waitForHttp200(`http://127.0.0.1:${env.PORT}/healthz`);
    const servicePid = service.child.pid!;

    const pg1 = postmasterPid();
    const { next: pg2, lines: pgLines } = await killAndRecover(pg1, 'PostgreSQL', () => tryRead(postmasterPid));
    expect(pgLines.find((l) => l.msg === 'embedded PostgreSQL restarted')).toMatchObject({ level: 40, server: 'postgres', pid: pg2, signal: 'SIGKILL' });
    // The pool serves new queries on new connections; the API reads and writes again.
    const pool = createPool(embeddedDatabaseUrl(Number(env.EMBEDDED_PG_PORT)));
    pool.on('error', () => undefined);
    try {
      const accountId = await insertAccount(pool);
      expect(accountId).toBeTruthy();
    } finally {
      await pool.end();
    }

    const t1 = devServerPid();
    const { next: t2, lines: temporalLines } = await killAndRecover(t1, 'the Temporal dev server', () => tryRead(devServerPid));
    expect(temporalLines.find((l) => l.msg === 'Temporal dev server restarted')).toMatchObject({ level: 40, server: 'temporal', pid: t2, signal: 'SIGKILL' });
    expect(service.child.exitCode).toBe(null);
    expect(service.child.pid).toBe(servicePid);

    // A snapshot goes all the way through on the restarted servers (workflow start, workers, database).
    const pool2 = createPool(embeddedDatabaseUrl(Number(env.EMBEDDED_PG_PORT)));
    pool2.on('error', () => undefined);
    const { client, connection } = await connectClient(loadEnv(env), { address: `127.0.0.1:${env.TEMPORAL_PORT}`, namespace: 'default' });
    try {
      const snapshots = createSnapshotService({ pool: pool2, client, taskQueue: 'volsnap', backupTaskQueue: 'volsnap-backup', logger: silentLogger });
      const accountId = await insertAccount(pool2);
      const vol = await insertVolume(pool2, new KvmStorageDriver(), { accountId, sizeBytes: 8 * MiB });
      await writePattern(vol.path, 0x11, 0, 4 * MiB);
      const { snapshot } = await snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: true });
      const done = await eventually(async () => {
        const s = await getSnapshot(pool2, snapshot.id);
        return s && ['BackedUp', 'Error'].includes(s.status) ? s : undefined;
      }, 60_000, 'BackedUp on the restarted servers');
      expect(done.status).toBe('BackedUp');
    } finally {
      await connection.close();
      await pool2.end();
    }

    // Stop still reaches the restarted servers (their new pids) and leaves nothing running.
    expect(await service.stop()).toBe(0);
    service = undefined;
    const lines = logLines(log);
    expect(lines.findIndex((l) => l.msg === 'Temporal dev server stopped' && l.pid === t2)).toBeGreaterThan(-1);
    expect(lines.findIndex((l) => l.msg === 'embedded PostgreSQL stopped')).toBeGreaterThan(-1);
    await expectNothingLingers(dataDir, env, 5_000);
    expect(existsSync(join(dataDir, 'temporal-dev-server.pid'))).toBe(false);
  });
});
