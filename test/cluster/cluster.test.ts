/**
 * The cluster tier: `npm run cluster`'s topology (scripts/cluster/topology.ts), which is docker-compose.yml's:
 * PostgreSQL with Temporal's two databases set up by temporal-sql-tool, the Temporal server of the version compose
 * pins with frontend, history, matching and worker as four processes (SQL visibility, the namespace registered,
 * volsnap's search attributes added through the operator API), two APIs behind one port and two workers. No dev
 * server anywhere.
 *
 * The core scenarios first (async early return, sync, a backup that fails for good and is compensated, the policy
 * while a backup runs, search attributes found through SQL visibility), then what only a cluster has: SIGKILL of
 * the history service mid-backup (started again by the supervisor, as compose's `restart: unless-stopped`), of
 * matching, of the frontend (held down: the API answers 503 meanwhile, then recovers), of the volsnap worker
 * running a copy (the other takes over), and a PostgreSQL restart mid-backup. After each: nothing lost, every
 * backup verified (sha256, the data of the moment of the snapshot), no attempt spent on a fault that is not the
 * copy's own, no temporary file left.
 *
 * The Temporal server is built by `npm run setup` (scripts/cluster.ts --build-only); on a machine where it was
 * not, beforeAll builds it (a few minutes, once).
 */
import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { Client, Connection } from '@temporalio/client';
import proto from '@temporalio/proto';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadEnv } from '../../config/env.js';
import { createPool, type Pool } from '../../db/pool.js';
import { KvmStorageDriver } from '../../storage/kvm.js';
import { connectClient } from '../../temporal/connection.js';
import { mayRunQuery, SEARCH_ATTRIBUTES } from '../../workflows/definitions.js';
import { readComposeTopology } from '../../scripts/cluster/compose.js';
import { ensureTemporalBuild } from '../../scripts/cluster/temporal.js';
import { startTopology, type ClusterPorts, type Topology, type Unit } from '../../scripts/cluster/topology.js';
import { eventually, holdsPattern, sha256File, writePattern } from '../support/fixtures.js';
import { freePortBetween } from '../../harness/ports.js';

const MiB = 1024 * 1024;
const DATA = 24 * MiB;
// 4 MiB/s per copy: a backup of DATA takes ~6 s, so each fault lands mid-copy.
const RATE = String(4 * MiB);
const ADMIN_KEY = 'cluster-tier-admin-key-0123456789abcdef';
const PendingActivityState = proto.temporal.api.enums.v1.PendingActivityState;

interface SnapshotJson {
  id: string;
  accountId: string;
  state: string;
  volumeId: string;
  workflowId: string;
  backup: { attempts: number; lastError: string | null };
  storeRefs: Array<{ role: string; installPath: string; state: string; checksum: string | null }>;
}
interface VolumeJson {
  id: string;
  type: string;
  path: string;
}

describe('cluster: the compose topology on a Temporal cluster persisted in PostgreSQL', () => {
  let tmp: string;
  let topology: Topology;
  let pool: Pool;
  let client: Client;
  let connection: Connection;
  const driver = new KvmStorageDriver({ logger: pino({ level: 'silent' }) });
  /** Every snapshot told "created", with the pattern its volume held then; checked at the end too. */
  const taken: Array<{ id: string; pattern: number; expect: 'BackedUp' | 'Error' }> = [];
  let patternSeq = 0x10;

  async function call<T>(method: string, path: string, body?: unknown): Promise<{ status: number; json: T }> {
    const res = await fetch(`${topology.apiUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${ADMIN_KEY}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    return { status: res.status, json: (await res.json().catch(() => null)) as T };
  }

  async function newVm(name: string): Promise<{ vmId: string; root: VolumeJson }> {
    const vm = await call<{ id: string; volumes: VolumeJson[] }>('POST', '/api/v1/vms', { name, hypervisor: 'KVM', rootDiskSizeBytes: 64 * MiB });
    expect(vm.status, JSON.stringify(vm.json)).toBe(201);
    return { vmId: vm.json.id, root: vm.json.volumes.find((v) => v.type === 'ROOT')! };
  }

  /** Writes a fresh pattern, snapshots, then overwrites (the backup must hold the data of the snapshot's moment). */
  async function snapshot(root: VolumeJson, asyncBackup = true, expectState: 'BackedUp' | 'Error' = 'BackedUp'): Promise<SnapshotJson> {
    const pattern = patternSeq++;
    await writePattern(root.path, pattern, 0, DATA);
    const res = await call<SnapshotJson>('POST', `/api/v1/volumes/${root.id}/snapshots`, { asyncBackup });
    expect(res.status, JSON.stringify(res.json)).toBe(201);
    taken.push({ id: res.json.id, pattern, expect: expectState });
    await writePattern(root.path, 0xee, 0, DATA);
    return res.json;
  }

  const getSnapshot = async (id: string) => (await call<SnapshotJson>('GET', `/api/v1/snapshots/${id}`)).json;

  async function settled(id: string, ms = 120_000): Promise<SnapshotJson> {
    return eventually(async () => {
      const s = await fetch(`${topology.apiUrl}/api/v1/snapshots/${id}`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })
        .then((r) => (r.ok ? (r.json() as Promise<SnapshotJson>) : undefined))
        .catch(() => undefined);
      return s && ['BackedUp', 'Error'].includes(s.state) ? s : undefined;
    }, ms, `snapshot ${id} settled`);
  }

  /** BackedUp, its Image ref Ready, the file there with its checksum and the data of the snapshot's moment. */
  async function verifyBackedUp(s: SnapshotJson): Promise<void> {
    expect([s.state, s.backup.lastError]).toEqual(['BackedUp', null]);
    const image = s.storeRefs.find((r) => r.role === 'Image')!;
    expect(image.state).toBe('Ready');
    const file = join(topology.dataDir, 'secondary', image.installPath);
    expect(await sha256File(file)).toBe(image.checksum);
    const { pattern } = taken.find((t) => t.id === s.id)!;
    expect(await holdsPattern(file, pattern, 0, DATA)).toBe(true);
    // The primary copy is kept.
    const { rows } = await pool.query<{ path: string }>('SELECT path FROM volumes WHERE id = $1', [s.volumeId]);
    expect(await driver.hasSnapshot(rows[0]!.path, s.id)).toBe(true);
  }

  /** A backup copying now (its temporary file written, the activity started on a worker under 2 s ago). */
  async function midCopy(s: SnapshotJson): Promise<{ workerIdentity: string }> {
    return eventually(async () => {
      const now = await getSnapshot(s.id);
      if (now.state !== 'BackingUp') return undefined;
      const dir = join(topology.dataDir, 'secondary', 'snapshots', now.accountId, now.volumeId);
      const files = existsSync(dir) ? readdirSync(dir) : [];
      if (!files.some((f) => f.startsWith(`${s.id}.qcow2`) && f !== `${s.id}.qcow2`)) return undefined;
      const { raw } = await client.workflow.getHandle(s.workflowId).describe();
      const attempt = raw.pendingActivities?.find(
        (a) => a.activityType?.name === 'backupSnapshotToSecondary' && a.state === PendingActivityState.PENDING_ACTIVITY_STATE_STARTED,
      );
      return attempt?.lastWorkerIdentity ? { workerIdentity: attempt.lastWorkerIdentity } : undefined;
    }, 60_000, `snapshot ${s.id} copying`);
  }

  /** A fault mid-backup: two backups running, `fault()` while they copy; both end BackedUp on their first attempt. */
  async function backupsSurvive(fault: (running: SnapshotJson[]) => Promise<void>, settleMs = 180_000): Promise<void> {
    const vms = await Promise.all([newVm(`vm-${patternSeq}-a`), newVm(`vm-${patternSeq}-b`)]);
    const running = [];
    for (const { root } of vms) running.push(await snapshot(root));
    await midCopy(running[0]!);
    await fault(running);
    const done = await Promise.all(running.map((s) => settled(s.id, settleMs)));
    for (const s of done) {
      await verifyBackedUp(s);
      // A fault of the cluster, not of the copy: no attempt spent.
      expect(s.backup.attempts, `attempts of ${s.id}`).toBe(1);
    }
  }

  beforeAll(async () => {
    const compose = readComposeTopology();
    // Normally built by `npm run setup`; a machine without it builds it here, once.
    await ensureTemporalBuild(compose.temporalVersion, (l) => console.log(`[cluster tier] ${l}`));
    tmp = mkdtempSync(join(tmpdir(), 'volsnap-cluster-'));
    // As root, PostgreSQL runs as the `postgres` user, which must reach its files.
    chmodSync(tmp, 0o755);
    // Below 32768: Temporal keeps its roles' ports in a smallint column (harness/ports.ts).
    const taken = new Set<number>();
    const p = async () => freePortBetween(20_000, 32_000, taken);
    const ports: ClusterPorts = {
      postgres: await p(),
      temporal: {
        frontendGrpc: await p(),
        frontendHttp: await p(),
        frontendMembership: await p(),
        historyGrpc: await p(),
        historyMembership: await p(),
        matchingGrpc: await p(),
        matchingMembership: await p(),
        workerGrpc: await p(),
        workerMembership: await p(),
      },
      api: await p(),
      apis: [await p(), await p()],
      workerMetrics: [await p(), await p()],
    };
    topology = await startTopology({
      dir: tmp,
      ports,
      adminApiKey: ADMIN_KEY,
      compose,
      restartDelayMs: 500,
      volsnapEnv: { BACKUP_RATE_LIMIT_BYTES_PER_SEC: RATE, WORKER_SHUTDOWN_GRACE_SECONDS: '10', LOG_LEVEL: 'info' },
      log: (m) => console.log(`[cluster tier] ${m}`),
    });
    pool = createPool(topology.databaseUrl, 2);
    pool.on('error', () => undefined);
    ({ client, connection } = await connectClient(loadEnv({}), { address: topology.temporalAddress, namespace: topology.namespace }));
    // Faster retries for the compensation scenario; settings apply to snapshots requested afterwards.
    expect((await call('PUT', '/api/v1/configurations/backup.retry.interval', { value: 1 })).status).toBe(200);
  }, 1_200_000);

  afterAll(async () => {
    await connection?.close().catch(() => undefined);
    await pool?.end().catch(() => undefined);
    await topology?.stop();
    if (tmp && !process.env.KEEP_CLUSTER_TMP) rmSync(tmp, { recursive: true, force: true });
  }, 300_000);

  it('runs each Temporal role as its own process on PostgreSQL persistence and SQL visibility', async () => {
    const pids = Object.values(topology.temporal).map((u) => u.pid());
    expect(new Set(pids).size).toBe(4);
    const { rows } = await pool.query<{ datname: string }>(`SELECT datname FROM pg_database WHERE datname LIKE 'temporal%' ORDER BY 1`);
    expect(rows.map((r) => r.datname)).toEqual(['temporal', 'temporal_visibility']);
    const info = await connection.workflowService.getSystemInfo({});
    expect(info.serverVersion).toBe(topology.build.version);
    const { customAttributes } = await connection.operatorService.listSearchAttributes({ namespace: topology.namespace });
    expect(Object.keys(customAttributes ?? {})).toEqual(expect.arrayContaining(Object.keys(SEARCH_ATTRIBUTES)));
  });

  it('async: 201 as soon as the primary snapshot exists, then BackedUp in the background', async () => {
    const { root } = await newVm('vm-async');
    const started = Date.now();
    const s = await snapshot(root, true);
    expect(['CreatedOnPrimary', 'BackingUp']).toContain(s.state);
    expect(Date.now() - started).toBeLessThan(20_000);
    await verifyBackedUp(await settled(s.id));
  });

  it('sync: 201 with the snapshot backed up', async () => {
    const { root } = await newVm('vm-sync');
    const s = await snapshot(root, false);
    expect(s.state).toBe('BackedUp');
    await verifyBackedUp(await settled(s.id));
  });

  it('16 snapshots of one volume requested at once all back up on their only attempt (issue 22 item 0)', async () => {
    const { root } = await newVm('vm-sixteen');
    expect((await call('PUT', '/api/v1/configurations/backup.max.attempts', { value: 1 })).status).toBe(200);
    try {
      const pattern = patternSeq++;
      await writePattern(root.path, pattern, 0, DATA);
      const answers = await Promise.all(
        Array.from({ length: 16 }, () => call<SnapshotJson>('POST', `/api/v1/volumes/${root.id}/snapshots`, { asyncBackup: true })),
      );
      for (const res of answers) {
        expect(res.status, JSON.stringify(res.json)).toBe(201);
        taken.push({ id: res.json.id, pattern, expect: 'BackedUp' });
      }
      const done = await Promise.all(answers.map((res) => settled(res.json.id, 240_000)));
      for (const s of done) {
        await verifyBackedUp(s);
        expect(s.backup.attempts, `attempts of ${s.id}`).toBe(1);
      }
    } finally {
      await call('PUT', '/api/v1/configurations/backup.max.attempts', { value: 3 });
    }
  });

  it('the policy holds while a backup runs (workflow query through the cluster) and lifts after it', async () => {
    const { vmId, root } = await newVm('vm-policy');
    const s = await snapshot(root, true);
    await midCopy(s);
    const resize = await call<{ error: { code: string } }>('POST', `/api/v1/volumes/${root.id}/resize`, { sizeBytes: 128 * MiB });
    expect(resize.status).toBe(409);
    expect(resize.json.error.code).toBe('OPERATION_NOT_ALLOWED_DURING_BACKUP');
    const stop = await call<unknown>('POST', `/api/v1/vms/${vmId}/actions`, { action: 'stop' });
    expect(stop.status, JSON.stringify(stop.json)).toBeLessThan(300);
    // The workflow's own answer (a query: frontend → history → matching → a volsnap worker, and back).
    const handle = client.workflow.getHandle(s.workflowId);
    expect(await handle.query(mayRunQuery, { kind: 'volume', action: 'resize', volumeId: root.id })).toMatchObject({ allowed: false, snapshotId: s.id });
    expect(await handle.query(mayRunQuery, { kind: 'vm', action: 'stop', vmId })).toEqual({ allowed: true });
    await verifyBackedUp(await settled(s.id));
    const after = await call('POST', `/api/v1/volumes/${root.id}/resize`, { sizeBytes: 128 * MiB });
    expect(after.status).toBeLessThan(300);
  });

  it('search attributes are found through SQL visibility', async () => {
    const { vmId, root } = await newVm('vm-visibility');
    const s = await snapshot(root, false);
    const found = await eventually(async () => {
      const ids: string[] = [];
      for await (const w of client.workflow.list({ query: `VolumeId = "${root.id}" AND VmId = "${vmId}" AND SnapshotState = "BackedUp"` })) ids.push(w.workflowId);
      return ids.length ? ids : undefined;
    }, 60_000, 'the workflow through its search attributes');
    expect(found).toEqual([s.workflowId]);
    const count = await client.workflow.count(`AccountId = "${s.accountId}"`);
    expect(count.count).toBeGreaterThanOrEqual(1);
  });

  it('a backup whose store is unusable fails after its attempts and is compensated (primary snapshot deleted)', async () => {
    const { root } = await newVm('vm-fail');
    const { rows } = await pool.query<{ path: string }>('SELECT path FROM image_stores');
    const storePath = rows[0]!.path;
    const blocker = join(tmp, 'not-a-directory');
    writeFileSync(blocker, '');
    await pool.query('UPDATE image_stores SET path = $1', [join(blocker, 'secondary')]);
    try {
      expect((await call('PUT', '/api/v1/configurations/backup.max.attempts', { value: 2 })).status).toBe(200);
      const s = await snapshot(root, true, 'Error');
      const failed = await settled(s.id);
      expect(failed.state).toBe('Error');
      expect(failed.backup.attempts).toBe(2);
      expect(failed.backup.lastError).toBeTruthy();
      expect(await driver.hasSnapshot(root.path, s.id)).toBe(false);
      expect(failed.storeRefs.find((r) => r.role === 'Primary')?.state).toBe('Destroyed');
    } finally {
      await pool.query('UPDATE image_stores SET path = $1', [storePath]);
      await call('PUT', '/api/v1/configurations/backup.max.attempts', { value: 3 });
    }
  });

  it('SIGKILL of the history service mid-backup: started again, every backup completes', async () => {
    await backupsSurvive(async () => {
      const before = topology.temporal.history.starts;
      await topology.temporal.history.kill('SIGKILL');
      await topology.temporal.history.ready();
      expect(topology.temporal.history.starts).toBe(before + 1);
    });
  });

  it('SIGKILL of the matching service mid-backup: started again, every backup completes', async () => {
    await backupsSurvive(async () => {
      await topology.temporal.matching.kill('SIGKILL');
      await topology.temporal.matching.ready();
    });
  });

  it('SIGKILL of the frontend mid-backup: the API answers 503 meanwhile, then recovers', async () => {
    await backupsSurvive(async () => {
      await topology.temporal.frontend.kill('SIGKILL', { hold: true });
      const health = await eventually(async () => {
        const r = await fetch(`${topology.apiUrl}/healthz`);
        return r.status === 503 ? r : undefined;
      }, 30_000, '/healthz 503');
      expect(health.status).toBe(503);
      // A snapshot request meanwhile: 503 with Retry-After, never a 500, and no row left Allocated/Creating.
      const { root } = await newVm('vm-frontend-down').catch(() => ({ root: null }));
      if (root) {
        const res = await fetch(`${topology.apiUrl}/api/v1/volumes/${root.id}/snapshots`, {
          method: 'POST',
          headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' },
          body: JSON.stringify({ asyncBackup: true }),
        });
        expect(res.status).toBe(503);
        expect(res.headers.get('retry-after')).toBeTruthy();
      }
      await topology.temporal.frontend.start();
      // Every API process reconnects soon after the frontend is back (not after a gRPC reconnect backoff grown
      // through the outage: by default up to 2 minutes, temporal/connection.ts), each asked directly, not through
      // the balancer, which would hide one still refusing.
      for (const url of topology.apiUrls) {
        await eventually(async () => ((await fetch(`${url}/healthz`)).status === 200 ? true : undefined), 20_000, `${url}/healthz 200 again`);
      }
    }, 240_000);
    // And new snapshots work again, through each API process.
    for (const url of topology.apiUrls) {
      const { root } = await newVm(`vm-after-frontend-${url.slice(-5)}`);
      const pattern = patternSeq++;
      await writePattern(root.path, pattern, 0, DATA);
      const res = await fetch(`${url}/api/v1/volumes/${root.id}/snapshots`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' },
        body: JSON.stringify({ asyncBackup: true }),
      });
      const body = (await res.json()) as SnapshotJson;
      expect(res.status, `${url}: ${JSON.stringify(body)}`).toBe(201);
      taken.push({ id: body.id, pattern, expect: 'BackedUp' });
      await verifyBackedUp(await settled(body.id));
    }
  }, 400_000);

  it('SIGKILL of the volsnap worker running a copy: the other worker takes it over, no attempt spent', async () => {
    let victim: Unit | undefined;
    await backupsSurvive(async (running) => {
      const { workerIdentity } = await midCopy(running[0]!);
      victim = topology.workers.find((w) => workerIdentity.startsWith(`${w.pid()}@`));
      expect(victim, `worker of ${workerIdentity}`).toBeDefined();
      await victim!.kill('SIGKILL', { hold: true });
    });
    await victim!.start();
  }, 300_000);

  it('PostgreSQL restarted mid-backup: Temporal and volsnap reconnect, every backup completes', async () => {
    await backupsSurvive(async () => {
      await topology.restartPostgres(2000);
    });
  }, 300_000);

  it('nothing lost: every snapshot told "created" ended as expected, and no row or temporary file is left in between', async () => {
    for (const t of taken) {
      const s = await settled(t.id);
      expect(s.state, t.id).toBe(t.expect);
      if (t.expect === 'BackedUp') await verifyBackedUp(s);
    }
    const { rows } = await pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM snapshots WHERE status IN ('Allocated', 'Creating', 'CreatedOnPrimary', 'BackingUp')`);
    expect(rows[0]!.n).toBe(0);
    const leftovers: string[] = [];
    const walk = (dir: string) => {
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        if (e.isDirectory()) walk(join(dir, e.name));
        else if (!/^[0-9a-f-]{36}\.qcow2$/.test(e.name)) leftovers.push(join(dir, e.name));
      }
    };
    const secondary = join(topology.dataDir, 'secondary');
    if (existsSync(secondary)) walk(secondary);
    expect(leftovers.map((f) => f.slice(dirname(secondary).length))).toEqual([]);
  }, 300_000);
});
