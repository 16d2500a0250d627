import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadEnv } from '../../config/env.js';
import { embeddedDatabaseUrl } from '../../db/embedded.js';
import { createPool, type Pool } from '../../db/pool.js';
import { updateSetting } from '../../db/settings.js';
import { getSnapshot, getStoreRefs } from '../../db/snapshots.js';
import { silentLogger } from '../../observability/logger.js';
import { createSnapshotService } from '../../services/snapshots.js';
import { KvmStorageDriver } from '../../storage/kvm.js';
import { connectClient } from '../../temporal/connection.js';
import { eventually, holdsPattern, insertAccount, insertVolume, sha256File, writePattern } from '../support/fixtures.js';
import { restartablePort } from '../../harness/ports.js';
import { spawnService, waitForHttp200 } from '../../harness/service-process.js';
import { startTestStack, type TestStack } from '../../harness/stack.js';

const MiB = 1024 * 1024;
// Slow copies (4 MiB/s over 48 MiB) so a crash reliably lands in the middle of one.
const RATE = String(4 * MiB);
const driver = new KvmStorageDriver();

async function snapshotMidCopy(pool: Pool, service: ReturnType<typeof createSnapshotService>) {
  await updateSetting(pool, 'backup.retry.interval', 2);
  const accountId = await insertAccount(pool);
  const vol = await insertVolume(pool, driver, { accountId, sizeBytes: 64 * MiB });
  await writePattern(vol.path, 0x3c, 0, 48 * MiB);
  const { snapshot } = await service.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: true });
  await eventually(async () => ((await getSnapshot(pool, snapshot.id))!.backupBytesDone > 0 ? true : undefined), 60_000, 'copy under way');
  await writePattern(vol.path, 0xc3, 0, 48 * MiB);
  return { snapshot, vol };
}

/** A killed worker costs no attempt (only copy failures count): `attempts` is exact. */
async function expectBackedUpIntact(pool: Pool, snapshotId: string, imageStore: string, attempts: number) {
  const done = await eventually(async () => {
    const s = await getSnapshot(pool, snapshotId);
    return s && ['BackedUp', 'Error'].includes(s.status) ? s : undefined;
  }, 150_000, 'BackedUp after the restart');
  expect(done.status).toBe('BackedUp');
  expect(done.backupAttempts).toBe(attempts);
  const image = (await getStoreRefs(pool, snapshotId)).find((r) => r.role === 'Image')!;
  const file = join(imageStore, image.installPath);
  expect(await sha256File(file)).toBe(image.checksum);
  expect(await holdsPattern(file, 0x3c, 0, 48 * MiB)).toBe(true);
  // The killed attempt's temporary file is gone: only the committed backup remains.
  expect(readdirSync(dirname(file))).toEqual([`${snapshotId}.qcow2`]);
}

describe('crash and restart (real processes)', () => {
  it('SIGKILL of the whole `npm start` process group mid-copy, then a restart on the same data dir: the backup completes', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'volsnap-crash-'));
    chmodSync(dataDir, 0o755);
    const env = {
      VOLSNAP_DATA_DIR: dataDir,
      PORT: String(await restartablePort()),
      EMBEDDED_PG_PORT: String(await restartablePort()),
      TEMPORAL_PORT: String(await restartablePort()),
      TEMPORAL_UI_PORT: String(await restartablePort()),
      BACKUP_RATE_LIMIT_BYTES_PER_SEC: RATE,
    };
    const log = join(dataDir, 'service-stdout.log');
    let service = spawnService('worker/main.ts', env, log);
    let pool: Pool | undefined;
    try {
      await waitForHttp200(`http://127.0.0.1:${env.PORT}/healthz`);
      pool = createPool(embeddedDatabaseUrl(Number(env.EMBEDDED_PG_PORT)));
      const { client, connection } = await connectClient(loadEnv(env), { address: `127.0.0.1:${env.TEMPORAL_PORT}`, namespace: 'default' });
      const snapshots = createSnapshotService({ pool, client, taskQueue: 'volsnap', backupTaskQueue: 'volsnap-backup', logger: silentLogger });
      const { snapshot } = await snapshotMidCopy(pool, snapshots);
      await connection.close();
      await pool.end();
      pool = undefined;

      await service.killGroup();
      service = spawnService('worker/main.ts', env, log);
      await waitForHttp200(`http://127.0.0.1:${env.PORT}/healthz`);
      pool = createPool(embeddedDatabaseUrl(Number(env.EMBEDDED_PG_PORT)));
      // The killed attempt is retried by a new one.
      await expectBackedUpIntact(pool, snapshot.id, join(dataDir, 'secondary'), 1);
    } finally {
      await pool?.end();
      expect(await service.stop()).toBe(0);
      rmSync(dataDir, { recursive: true, force: true });
    }
  });

  describe('with the API side in process and `npm run worker` apart', () => {
    let stack: TestStack;
    let workerEnv: Record<string, string>;
    beforeAll(async () => {
      stack = await startTestStack({ roles: ['api'] });
      workerEnv = {
        VOLSNAP_DATA_DIR: stack.dataDir,
        DATABASE_URL: embeddedDatabaseUrl(stack.env.EMBEDDED_PG_PORT),
        TEMPORAL_ADDRESS: stack.devServer!.address,
        BACKUP_RATE_LIMIT_BYTES_PER_SEC: RATE,
      };
    });
    afterAll(async () => {
      await stack?.stop();
    });

    const startWorker = async () => {
      const w = spawnService('worker/worker-main.ts', workerEnv, join(stack.dataDir, 'worker-stdout.log'));
      await eventually(async () => ((await stack.health()).checks.backupWorkers ? true : undefined), 90_000, 'worker polling');
      return w;
    };

    it('SIGKILL of the worker alone mid-copy, then a new worker: the backup completes', async () => {
      let worker = await startWorker();
      try {
        const { snapshot } = await snapshotMidCopy(stack.pool, stack.snapshots);
        await worker.killGroup();
        worker = await startWorker();
        await expectBackedUpIntact(stack.pool, snapshot.id, join(stack.dataDir, 'secondary'), 1);
      } finally {
        await worker.stop();
      }
    });

    it('the Temporal dev server killed mid-copy: its keeper starts it again, the worker reconnects and the backup completes', async () => {
      const worker = await startWorker();
      try {
        const { snapshot } = await snapshotMidCopy(stack.pool, stack.snapshots);
        const killed = stack.devServer!.pid;
        process.kill(killed, 'SIGKILL');
        const t0 = Date.now();
        // Nobody starts it by hand: the keeper does, on the same SQLite file, and records the new pid.
        await eventually(async () => (stack.devServer!.pid !== killed ? true : undefined), 30_000, 'the dev server restarted by its keeper');
        const pidFile = JSON.parse(readFileSync(join(stack.dataDir, 'temporal-dev-server.pid'), 'utf8')) as { pid: number };
        expect(pidFile.pid).toBe(stack.devServer!.pid);
        await eventually(async () => ((await stack.health()).ok ? true : undefined), 60_000, 'healthy again (workers polling)');
        console.log(`dev server back and polled after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
        // The copy itself never stopped: its completion reaches the server once it is back.
        await expectBackedUpIntact(stack.pool, snapshot.id, join(stack.dataDir, 'secondary'), 1);
      } finally {
        await worker.stop();
      }
    });
  });
});
