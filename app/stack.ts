import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client, Connection } from '@temporalio/client';
import type { NativeConnection } from '@temporalio/worker';
import type { Logger } from 'pino';
import { createSnapshotActivities, type SnapshotActivities } from '../activities/snapshot-activities.js';
import { createBackupScrubActivities } from '../activities/backup-scrub-activities.js';
import { createStorageGcActivities } from '../activities/storage-gc-activities.js';
import type { Env } from '../config/env.js';
import { connectKvmHost, registerIsoImage, seedCatalog, setHostAccelerator, type XenServerCatalog } from '../db/catalog.js';
import { ensureToolsIso, TOOLS_ISO_NAME } from '../compute/iso.js';
import { testGuest } from '../compute/test-guest.js';
import { chooseAccelerator, type AcceleratorChoice } from '../compute/accelerator.js';
import { ensureLibvirt, SYSTEM_URI } from '../compute/libvirt-daemon.js';
import { createComputeRegistry, type ComputeRegistry } from '../compute/registry.js';
import { hostTaskQueue } from '../compute/host-queue.js';
import { createHostActivities, createVmStepActivities } from '../activities/vm-step-activities.js';
import { createVmPowerSync } from '../services/vm-power-sync.js';
import { hostQueueVmSteps, type VmStepDispatcher } from '../services/vm-step-dispatch.js';
import { createVmStepRunner, type VmStepRunner } from '../services/vm-steps.js';
import { liveImageResolver } from '../services/live-images.js';
import { startEmbeddedPostgres, type EmbeddedDatabase } from '../db/embedded.js';
import { migrate } from '../db/migrate.js';
import { createPool, ping, type Pool } from '../db/pool.js';
import { readSettings, seedSettings } from '../db/settings.js';
import { ensureAdminCloudStackKeys } from '../services/cloudstack/keys.js';
import { volumeIdOfSnapshot } from '../db/snapshots.js';
import { ensureAdminAccount } from '../services/accounts.js';
import { createSnapshotService, type SnapshotService } from '../services/snapshots.js';
import { createBackupScrubService, type BackupScrubService } from '../services/backup-scrub.js';
import { createStorageGcService, type StorageGcService } from '../services/storage-gc.js';
import { settleInterruptedDeletes } from '../services/snapshot-delete.js';
import { reconcileStuckVolumes } from '../services/volume-reconcile.js';
import { processMetrics, type VolsnapMetrics } from '../observability/metrics.js';
import { KvmStorageDriver } from '../storage/kvm.js';
import { XenServerStorageDriver } from '../storage/xen.js';
import type { StorageDrivers } from '../storage/driver.js';
import { connectClient, connectWorker } from '../temporal/connection.js';
import { startDevServer, type DevServer } from '../temporal/dev-server.js';
import { ensureSearchAttributes } from '../temporal/search-attributes.js';
import { claimDataDir } from './pids.js';
import { activityLogContext } from './runtime.js';
import { startWorkers, type RunningWorkers } from './workers.js';

export type Role = 'api' | 'worker';

/** The KVM host `npm start` is when KVM_HOST does not say (the seeded one). */
const DEFAULT_KVM_HOST = 'kvm-host-1';

export interface Stack {
  env: Env;
  logger: Logger;
  pool: Pool;
  client: Client;
  connection: Connection;
  drivers: StorageDrivers;
  /**
   * The hosts' libvirt as this process reaches it (KVM_COMPUTE=libvirt; null with none). A host's worker
   * (KVM_HOST; `npm start`) runs its libvirt; other processes reach a host's libvirt only for storage work on a
   * running VM's image (VM actions go to the host's task queue, `vmSteps`).
   */
  compute: ComputeRegistry | null;
  /** Where KVM VM actions' hypervisor steps go: their hosts' task queues; null with KVM_COMPUTE=none. */
  vmSteps: VmStepDispatcher | null;
  /** When a KVM host's worker last polled its task queue; null with KVM_COMPUTE=none. */
  hostWorkerLastPoll: ((hostName: string) => Promise<Date | null>) | null;
  /** Where the VMs' serial consoles are written. */
  consoleDir: string;
  snapshots: SnapshotService;
  devServer: DevServer | null;
  /** Where the console and the Temporal Web UI are reached, for links between them. */
  links: { consoleUrl: string; temporalUiUrl: string | null; namespace: string };
  workers: RunningWorkers | null;
  /** Storage GC: run now (POST /api/v1/storage/gc), update the schedule when storage.cleanup.interval changes. */
  storageGc: StorageGcService;
  /** The backup scrub: run now (POST /api/v1/storage/scrub), re-time its schedule when backup.scrub.interval changes. */
  backupScrub: BackupScrubService;
  /** This process's Prometheus registry (GET /metrics: observability/metrics.ts metricsHandler). */
  metrics: VolsnapMetrics;
  /** Database and Temporal answer, and the task queues have pollers. */
  health(): Promise<{ ok: boolean; checks: Record<string, boolean> }>;
  close(): Promise<void>;
}

/**
 * The composition root: connects (or starts, with embedded defaults) PostgreSQL and Temporal, migrates and
 * seeds the database, and runs the workers when asked. `npm start`, `npm run api`, `npm run worker` and the
 * integration tests all build the service through here.
 */
export async function startStack(env: Env, logger: Logger, roles: Role[]): Promise<Stack> {
  const closers: Array<() => Promise<void>> = [];
  const close = async () => {
    for (const c of closers.reverse()) await c().catch((err) => logger.error({ err }, 'shutdown step failed'));
  };
  try {
    // Embedded servers run from the data dir: one owner at a time, and a dead owner's leftovers are ours to
    // clear. Released last, after the servers have stopped.
    if (!env.DATABASE_URL || !env.TEMPORAL_ADDRESS) {
      const owner = claimDataDir(env.dataDir, logger);
      closers.push(async () => owner.release());
    }
    let databaseUrl = env.DATABASE_URL;
    if (!databaseUrl) {
      const db: EmbeddedDatabase = await startEmbeddedPostgres(join(env.dataDir, 'postgres'), env.EMBEDDED_PG_PORT, logger, { ownedRoot: env.dataDir });
      closers.push(() => db.stop());
      databaseUrl = db.url;
    }
    await migrate(databaseUrl, logger);
    const pool = createPool(databaseUrl, env.DATABASE_POOL_MAX);
    // An idle connection that fails (PostgreSQL restarted under us, say) is dropped and the next query opens a new
    // one: worth a warning, not an error. Once the pool is ending, its last connections closing as PostgreSQL stops
    // (57P01) are expected.
    pool.on('error', (err) => {
      if (!pool.ending) logger.warn({ err }, 'a database connection failed while idle; the pool opens a new one when needed');
    });
    closers.push(() => pool.end());
    await seedSettings(pool);
    for (const m of await seedCatalog(pool, env.dataDir, xenServerCatalog(env))) {
      logger.warn(m, `${m.name} is at ${m.inDatabase} (seeded by the first process on this database), not under this process's VOLSNAP_DATA_DIR; that path is used`);
    }
    if (roles.includes('api')) {
      await ensureAdminAccount(pool, env.ADMIN_API_KEY, logger, join(env.dataDir, 'admin-api-key'));
      await ensureAdminCloudStackKeys(pool, env, logger);
    }

    let devServer: DevServer | null = null;
    let address = env.TEMPORAL_ADDRESS;
    if (!address) {
      devServer = await startDevServer({
        dataDir: env.dataDir,
        port: env.TEMPORAL_PORT,
        uiPort: env.TEMPORAL_UI_PORT,
        namespace: env.TEMPORAL_NAMESPACE,
        logger,
      });
      closers.push(() => devServer!.stop());
      address = devServer.address;
    }
    const target = { address, namespace: env.TEMPORAL_NAMESPACE };
    const { client, connection } = await connectClient(env, target);
    closers.push(() => connection.close());
    if (!devServer) await ensureSearchAttributes(connection, env.TEMPORAL_NAMESPACE, logger);

    const consoleDir = join(env.dataDir, 'consoles');
    // A worker process with libvirt that is a KVM host (KVM_HOST; `npm start` is kvm-host-1) ensures its libvirt
    // and serves that host's task queue. Any other process reaches a host's libvirt by its URI, only for storage
    // work on a running VM's image.
    const hostName = env.KVM_HOST ?? (roles.includes('api') ? DEFAULT_KVM_HOST : undefined);
    const isHost = env.KVM_COMPUTE === 'libvirt' && roles.includes('worker') && hostName !== undefined;
    const compute = isHost ? await startCompute(env, hostName!, logger, pool, consoleDir, closers) : env.KVM_COMPUTE === 'libvirt' ? reachHosts(env, logger) : null;
    const vmBoot = isHost && env.VM_BOOT === 'auto' ? testGuest(undefined, { workload: env.VM_GUEST_WORKLOAD === 'on' }) : undefined;
    if (isHost && compute?.local.available) startAcceleratorProbe(env, hostName!, logger, pool, compute, closers);
    if (isHost) logger.info({ boot: vmBoot ? 'test guest' : 'ROOT disk', workload: vmBoot ? env.VM_GUEST_WORKLOAD : undefined }, 'what KVM VMs boot');
    const drivers: Stack['drivers'] = {
      KVM: new KvmStorageDriver({
        logger,
        backupRateLimitBytesPerSec: env.BACKUP_RATE_LIMIT_BYTES_PER_SEC,
        ...(compute ? { liveImages: liveImageResolver(pool, compute) } : {}),
      }),
    };
    const xen = xenServerDriver(env, logger);
    if (xen) {
      drivers.XenServer = xen;
      closers.push(() => xen.close());
    }
    // A process that died between the two commits of a migrate/resize/new-volume left its volume busy: settle
    // the ones whose heartbeat is stale (live operations in other processes keep theirs fresh).
    await reconcileStuckVolumes({ pool, drivers, logger }).then(
      (r) => r.settled.length && logger.warn({ volumes: r.settled }, 'volumes left in a transitional state were settled at start-up'),
      (err: unknown) => logger.error({ err }, 'could not reconcile volumes left in a transitional state; storage GC will retry'),
    );
    // A delete that died between its intent and its result (a snapshot left Destroying, a Destroyed volume's
    // image still on disk): finished now, idempotently (storage GC does the same on every run).
    await settleInterruptedDeletes({ pool, drivers, logger }).catch((err: unknown) =>
      logger.error({ err }, 'could not finish interrupted deletes; storage GC will retry'),
    );
    const metrics = processMetrics();
    const storageGc = createStorageGcService({ client, taskQueue: env.TEMPORAL_TASK_QUEUE, logger });
    const backupScrub = createBackupScrubService({ client, taskQueue: env.TEMPORAL_TASK_QUEUE, logger });
    let workers: RunningWorkers | null = null;
    let workerConnection: NativeConnection | null = null;
    if (roles.includes('worker')) {
      workerConnection = await connectWorker(env, target);
      const settings = await readSettings(pool);
      const snapshotActivities = createSnapshotActivities({ pool, drivers, logger, metrics: metrics.backupHooks });
      const runner = isHost && compute ? createVmStepRunner({ pool, logger, compute, kvm: drivers.KVM!, consoleDir, vmBoot }) : null;
      workers = await startWorkers({
        connection: workerConnection,
        namespace: env.TEMPORAL_NAMESPACE,
        taskQueue: env.TEMPORAL_TASK_QUEUE,
        backupTaskQueue: env.TEMPORAL_BACKUP_TASK_QUEUE,
        activities: snapshotActivities,
        backupPoolSize: settings['backup.pool.size'],
        shutdownGraceSeconds: env.WORKER_SHUTDOWN_GRACE_SECONDS,
        logger,
        extraActivities: {
          ...createStorageGcActivities({ pool, drivers, logger, client }),
          ...createBackupScrubActivities({ pool, logger }),
          ...createVmStepActivities(pool),
        },
        activityInterceptors: [activityLogContext((id) => volumeIdOfSnapshot(pool, id))],
        ...(runner ? { host: hostWorker(env, hostName!, runner, snapshotActivities) } : {}),
      });
      closers.push(async () => {
        await workers!.shutdown();
        await workerConnection!.close();
      });
      // The GC schedule is ensured where GC runs; a failure here must not keep backups from running.
      await storageGc
        .ensureSchedule(settings['storage.cleanup.interval'])
        .catch((err) => logger.error({ err }, 'could not create or update the storage GC schedule'));
      await backupScrub
        .ensureSchedule(settings['backup.scrub.interval'])
        .catch((err) => logger.error({ err }, 'could not create or update the backup scrub schedule'));
      if (isHost && compute) startPowerSync(env, logger, pool, compute, closers);
    }

    const links = {
      consoleUrl: (env.PUBLIC_URL ?? `http://localhost:${env.PORT}`).replace(/\/+$/, ''),
      temporalUiUrl: (env.TEMPORAL_UI_URL ?? devServer?.uiUrl ?? null)?.replace(/\/+$/, '') ?? null,
      namespace: env.TEMPORAL_NAMESPACE,
    };
    const vmSteps =
      env.KVM_COMPUTE === 'libvirt'
        ? hostQueueVmSteps({ client, pool, taskQueue: env.TEMPORAL_TASK_QUEUE, hostTimeoutSeconds: env.VM_HOST_TIMEOUT_SECONDS })
        : null;

    const snapshots = createSnapshotService({
      consoleUrl: links.consoleUrl,
      pool,
      drivers,
      client,
      taskQueue: env.TEMPORAL_TASK_QUEUE,
      backupTaskQueue: env.TEMPORAL_BACKUP_TASK_QUEUE,
      logger,
      ...(env.KVM_COMPUTE === 'libvirt' ? { hostTaskQueues: { timeoutSeconds: env.VM_HOST_TIMEOUT_SECONDS } } : {}),
      ...(vmSteps ? { vmSteps } : {}),
    });
    // Runs before the Temporal connection closes (closers run newest first): requests in flight settle first.
    closers.push(() => snapshots.close());

    const health = async () => {
      const checks: Record<string, boolean> = {};
      checks.database = await ping(pool);
      checks.temporal = await connection.workflowService.getSystemInfo({}).then(() => true, () => false);
      for (const [name, queue] of [['workers', env.TEMPORAL_TASK_QUEUE], ['backupWorkers', env.TEMPORAL_BACKUP_TASK_QUEUE]] as const) {
        checks[name] = await connection.workflowService
          .describeTaskQueue({
            namespace: env.TEMPORAL_NAMESPACE,
            taskQueue: { name: queue },
            taskQueueType: name === 'workers' ? 1 : 2,
          })
          .then((r) => (r.pollers?.length ?? 0) > 0, () => false);
      }
      return { ok: Object.values(checks).every(Boolean), checks };
    };

    const hostWorkerLastPoll =
      env.KVM_COMPUTE === 'libvirt'
        ? async (hostName: string): Promise<Date | null> => {
            const r = await connection.workflowService.describeTaskQueue({
              namespace: env.TEMPORAL_NAMESPACE,
              taskQueue: { name: hostTaskQueue(env.TEMPORAL_TASK_QUEUE, hostName) },
              taskQueueType: 2,
            });
            const last = Math.max(0, ...(r.pollers ?? []).map((p) => (p.lastAccessTime ? Number(p.lastAccessTime.seconds ?? 0) * 1000 : 0)));
            return last > 0 ? new Date(last) : null;
          }
        : null;

    return { env, logger, pool, client, connection, drivers, compute, vmSteps, hostWorkerLastPoll, consoleDir, snapshots, devServer, links, workers, storageGc, backupScrub, metrics, health, close };
  } catch (err) {
    await close();
    throw err;
  }
}

/** The host worker of this KVM host: its VMs' libvirt steps, and creating and compensating their disks' snapshots. */
function hostWorker(env: Env, name: string, runner: VmStepRunner, snapshots: SnapshotActivities) {
  return {
    name,
    taskQueue: hostTaskQueue(env.TEMPORAL_TASK_QUEUE, name),
    activities: {
      ...createHostActivities(runner),
      createSnapshotOnPrimary: snapshots.createSnapshotOnPrimary,
      deletePrimarySnapshot: snapshots.deletePrimarySnapshot,
    },
  };
}

/** Hosts' libvirt reached by URI, for storage work on running VMs' images; this process runs no libvirt. */
function reachHosts(env: Env, logger: Logger): ComputeRegistry {
  const uri = env.LIBVIRT_URI ?? SYSTEM_URI;
  const workDir = join(env.dataDir, 'libvirt-xml');
  mkdirSync(workDir, { recursive: true });
  return createComputeRegistry({ local: { uri, available: true, reason: null }, workDir, logger, stopTimeoutMs: env.VM_STOP_TIMEOUT_SECONDS * 1000 });
}

/**
 * The local libvirt (started when nothing answers at its URI) and the compute registry over it. A libvirt that
 * cannot run does not stop the service: storage and XenServer go on, and KVM VM actions are refused with
 * HYPERVISOR_UNAVAILABLE while the reason is logged here.
 */
async function startCompute(env: Env, hostName: string, logger: Logger, pool: Pool, consoleDir: string, closers: Array<() => Promise<void>>): Promise<ComputeRegistry> {
  const uri = env.LIBVIRT_URI ?? SYSTEM_URI;
  let reason: string | null = null;
  try {
    const daemon = await ensureLibvirt({ uri, logDir: join(env.dataDir, 'logs', 'libvirt'), logger });
    closers.push(() => daemon.stop());
  } catch (err) {
    reason = err instanceof Error ? err.message : String(err);
    logger.error({ err, uri }, 'libvirt is unavailable: KVM VMs cannot start until it is (set KVM_COMPUTE=none to keep them as records only)');
  }
  mkdirSync(consoleDir, { recursive: true });
  const workDir = join(env.dataDir, 'libvirt-xml');
  mkdirSync(workDir, { recursive: true });
  const iso = await ensureToolsIso(join(env.dataDir, 'isos'));
  if ('path' in iso) await registerIsoImage(pool, TOOLS_ISO_NAME, 'Other (64-bit)', iso.path);
  else logger.warn({ reason: iso.reason }, `could not build the ${TOOLS_ISO_NAME} ISO (xorriso); ISOs cannot go into running VMs`);
  const connected = await connectKvmHost(pool, hostName, uri);
  if (connected.changed) logger.info({ host: hostName, uri, previous: connected.previous }, 'KVM host connected to this libvirt');
  return createComputeRegistry({ local: { uri, available: reason === null, reason }, workDir, logger, stopTimeoutMs: env.VM_STOP_TIMEOUT_SECONDS * 1000 });
}

/**
 * The local host's accelerator: configured, or probed in the background (a KVM that hangs costs the probe's
 * deadline, which start-up does not wait for; VMs started meanwhile run under TCG).
 */
function startAcceleratorProbe(env: Env, hostName: string, logger: Logger, pool: Pool, compute: ComputeRegistry, closers: Array<() => Promise<void>>): void {
  const record = async (choice: AcceleratorChoice) => {
    compute.setLocalAccelerator(choice);
    await setHostAccelerator(pool, hostName, choice.accelerator, choice.reason).catch((err: unknown) =>
      logger.warn({ err }, 'could not record the host accelerator'),
    );
  };
  if (env.VM_ACCELERATOR !== 'auto') {
    void record({ accelerator: env.VM_ACCELERATOR, reason: 'configured (VM_ACCELERATOR)', probedAt: null });
    return;
  }
  const stop = new AbortController();
  const probing = chooseAccelerator({
    driver: compute.reachable()[0]!,
    guest: testGuest(),
    dir: join(env.dataDir, 'libvirt-probe'),
    timeoutMs: 60_000,
    logger,
    signal: stop.signal,
  })
    .then(record)
    .catch((err: unknown) => {
      if (!stop.signal.aborted) logger.warn({ err }, 'the accelerator probe failed; VMs run under TCG');
    });
  // At shutdown the probe stops at once and destroys its domain; it runs again at the next start.
  closers.push(async () => {
    stop.abort();
    await probing;
  });
}

/** The VM power-state sync, once now and then every VM_POWER_SYNC_SECONDS, on worker processes. */
function startPowerSync(env: Env, logger: Logger, pool: Pool, compute: ComputeRegistry, closers: Array<() => Promise<void>>): void {
  if (env.VM_POWER_SYNC_SECONDS === 0) return;
  const sync = createVmPowerSync({ pool, logger, compute, staleMs: env.VM_ACTION_STALE_SECONDS * 1000 });
  let running: Promise<unknown> | null = null;
  const round = () => {
    if (running) return;
    running = sync
      .syncOnce()
      .catch((err: unknown) => logger.error({ err }, 'VM power-state sync failed; the next round retries'))
      .finally(() => (running = null));
  };
  round();
  const timer = setInterval(round, env.VM_POWER_SYNC_SECONDS * 1000);
  timer.unref();
  closers.push(async () => {
    clearInterval(timer);
    await running;
  });
}

/** XenServer storage, when a pool master and its credentials are configured. */
function xenServerDriver(env: Env, logger: Logger): XenServerStorageDriver | null {
  if (!env.XENSERVER_URL || !env.XENSERVER_USERNAME || !env.XENSERVER_PASSWORD) return null;
  return new XenServerStorageDriver({
    url: env.XENSERVER_URL,
    username: env.XENSERVER_USERNAME,
    password: env.XENSERVER_PASSWORD,
    ...(env.XENSERVER_CA_FILE ? { ca: readFileSync(env.XENSERVER_CA_FILE, 'utf8') } : {}),
    logger,
  });
}

/** The XenServer SRs to offer as primary storage pools. */
function xenServerCatalog(env: Env): XenServerCatalog | undefined {
  if (!env.XENSERVER_URL || !env.XENSERVER_SR_UUIDS) return undefined;
  return {
    hostAddress: new URL(env.XENSERVER_URL).hostname,
    srUuids: env.XENSERVER_SR_UUIDS.split(',').map((u) => u.trim()).filter(Boolean),
  };
}
