import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Hono } from 'hono';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { updateSetting } from '../../db/settings.js';
import { getSnapshot } from '../../db/snapshots.js';
import { createLogger, flushLogger, type Logger } from '../../observability/logger.js';
import { metricsHandler, metricsMiddleware } from '../../observability/metrics.js';
import { installTemporalRuntime, temporalSdkMetricsUrl } from '../../app/runtime.js';
import { eventually, insertAccount, insertVolume } from '../support/fixtures.js';
import { startTestStack, type TestStack } from '../../harness/stack.js';

const MiB = 1024 * 1024;

type LogLine = Record<string, any>;

/** management-server.log and /metrics on a real stack. */
describe('observability', () => {
  let dataDir: string;
  let logFile: string;
  let logger: Logger;
  let stack: TestStack;
  let accountId: string;
  let storePath: string;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'volsnap-obs-'));
    chmodSync(dataDir, 0o755);
    logFile = join(dataDir, 'logs', 'management-server.log');
    logger = createLogger({ logFile, level: 'info', name: 'volsnap-test', stdout: false });
    // As bootstrap() does: SDK logs through the same logger, SDK metrics on a loopback port.
    installTemporalRuntime(logger);
    stack = await startTestStack({ dataDir, logger });
    accountId = await insertAccount(stack.pool);
    storePath = (await stack.pool.query('SELECT path FROM image_stores')).rows[0].path;
  });
  afterAll(async () => {
    await stack?.stop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  const readLog = (): LogLine[] =>
    existsSync(logFile)
      ? readFileSync(logFile, 'utf8')
          .split('\n')
          .filter(Boolean)
          .map((l) => JSON.parse(l) as LogLine)
      : [];

  const waitFor = (id: string, states: string[]) =>
    eventually(async () => {
      const s = await getSnapshot(stack.pool, id);
      return s && states.includes(s.status) ? s : undefined;
    }, 90_000, `snapshot ${id} in ${states.join('|')}`);

  it('a failed backup attempt reaches management-server.log at level error, with the snapshot, volume, workflow, attempt and cause', async () => {
    const vol = await insertVolume(stack.pool, stack.drivers.KVM!, { accountId, sizeBytes: 8 * MiB });
    const blocker = join(dataDir, 'not-a-directory');
    writeFileSync(blocker, '');
    await updateSetting(stack.pool, 'backup.max.attempts', 1);
    await stack.pool.query('UPDATE image_stores SET path = $1', [join(blocker, 'x')]);
    let snapshotId: string;
    let workflowId: string;
    try {
      ({ id: snapshotId, workflowId } = (await stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: true })).snapshot);
      await waitFor(snapshotId, ['Error']);
    } finally {
      await stack.pool.query('UPDATE image_stores SET path = $1', [storePath]);
      await updateSetting(stack.pool, 'backup.max.attempts', 3);
    }
    await flushLogger(logger);

    const isOurs = (l: LogLine) => l.snapshotId === snapshotId;
    const failed = await eventually(
      async () => readLog().find((l) => isOurs(l) && l.level === 50 && /backup attempt 1 of 1 failed/.test(l.msg)),
      10_000,
      'the failed-attempt line',
    );
    expect(failed).toMatchObject({ snapshotId, volumeId: vol.volumeId, workflowId, attempt: 1, name: 'volsnap-test' });
    // The error with its message and stack (errWithCause serializer).
    expect(failed.err?.message).toMatch(/image store .* is unusable/);
    expect(failed.err?.stack).toBeTruthy();

    // Workflow-side log lines (through the SDK runtime logger) carry snapshotId too. Workflow logs
    // leave the workflow sandbox through a sink after the activation, so they may trail the DB state.
    const workflowLine = await eventually(
      async () => (await flushLogger(logger), readLog().find((l) => isOurs(l) && l.component === 'temporal-sdk' && l.sdkComponent === 'workflow' && l.level >= 50 && /backup failed; deleting the primary snapshot/.test(l.msg))),
      10_000,
      'the workflow-side error line',
    );
    expect(workflowLine).toMatchObject({ workflowId });
    // The SDK's own "Activity failed" line carries the error's message, under `err`.
    const sdkFailed = await eventually(
      async () => readLog().find((l) => isOurs(l) && l.component === 'temporal-sdk' && l.msg === 'Activity failed'),
      10_000,
      'the SDK activity-failed line',
    );
    expect(sdkFailed).toMatchObject({ attempt: 1, volumeId: vol.volumeId, err: { message: expect.stringMatching(/unusable/) } });
    // Every error line about this snapshot names snapshot, volume, workflow and (for activities) the attempt.
    const errors = readLog().filter((l) => isOurs(l) && l.level >= 50);
    expect(errors.length).toBeGreaterThan(1);
    for (const l of errors) {
      expect(l.workflowId, JSON.stringify(l)).toBe(workflowId);
      expect(l.volumeId, JSON.stringify(l)).toBe(vol.volumeId);
    }
  });

  it('start-up: the workers say what each is for, and the activity-only backup worker raises no "no workflows" warning', async () => {
    // After the test above: the backup worker has run a copy, so it set up its pollers (and the SDK said whatever it
    // says then) before.
    await flushLogger(logger);
    const lines = readLog();
    const running = lines.find((l) => typeof l.msg === 'string' && l.msg.startsWith('workers running:'));
    expect(running?.msg).toMatch(/backup copies only: activities, no workflows/);
    expect(running?.level).toBe(30);
    const warned = lines.filter((l) => l.level >= 40 && /No workflows registered/.test(String(l.msg)));
    expect(warned).toEqual([]);
  });

  it('lines the storage driver writes inside an activity carry the activity identity too', async () => {
    const vol = await insertVolume(stack.pool, stack.drivers.KVM!, { accountId, sizeBytes: 8 * MiB });
    const { snapshot } = await stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: false });
    expect(snapshot.status).toBe('BackedUp');
    await flushLogger(logger);
    // The KVM driver knows only paths and the snapshot id; the activity's log context adds the rest.
    const line = await eventually(
      async () => readLog().find((l) => l.snapshotId === snapshot.id && l.msg === 'backup finished'),
      10_000,
      'the driver line',
    );
    expect(line).toMatchObject({ volumeId: vol.volumeId, workflowId: snapshot.workflowId, attempt: 1, activity: 'backupSnapshotToSecondary' });
    // No duplicate keys where the activity's own logger already names them.
    const raw = readFileSync(logFile, 'utf8').split('\n').find((l) => l.includes(`"snapshotId":"${snapshot.id}"`) && l.includes('"msg":"backup completed"'));
    expect(raw?.match(/"snapshotId":/g)).toHaveLength(1);
  });

  it('GET /metrics exposes volsnap counters, snapshot states, HTTP durations and the Temporal SDK metrics', async () => {
    const vol = await insertVolume(stack.pool, stack.drivers.KVM!, { accountId, sizeBytes: 8 * MiB });
    const { snapshot } = await stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: false });
    expect(snapshot.status).toBe('BackedUp');
    expect(temporalSdkMetricsUrl()).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);

    const app = new Hono();
    app.use(metricsMiddleware());
    app.get('/metrics', metricsHandler(stack.pool));
    app.get('/things/:id', (c) => c.text('ok'));
    expect((await app.request('/things/42')).status).toBe(200);
    expect((await app.request('/nowhere')).status).toBe(404);

    const res = await app.request('/metrics');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
    const text = await res.text();
    const value = (series: string) => {
      const line = text.split('\n').find((l) => l.startsWith(`${series} `));
      return line ? Number(line.slice(series.length + 1)) : undefined;
    };
    expect(value('volsnap_backup_attempts_total')).toBeGreaterThanOrEqual(2);
    expect(value('volsnap_backup_failures_total')).toBeGreaterThanOrEqual(1);
    expect(value('volsnap_backup_bytes_total')).toBeGreaterThan(0);
    expect(value('volsnap_backup_duration_seconds_count{outcome="success"}')).toBeGreaterThanOrEqual(1);
    expect(value('volsnap_backup_duration_seconds_count{outcome="failure"}')).toBeGreaterThanOrEqual(1);
    expect(value('volsnap_snapshots{state="BackedUp"}')).toBeGreaterThanOrEqual(1);
    expect(value('volsnap_snapshots{state="Error"}')).toBeGreaterThanOrEqual(1);
    expect(value('volsnap_snapshots{state="Destroying"}')).toBe(0);
    expect(value('volsnap_http_request_duration_seconds_count{method="GET",route="/things/:id",status="200"}')).toBe(1);
    expect(value('volsnap_http_request_duration_seconds_count{method="GET",route="unmatched",status="404"}')).toBe(1);
    // The Temporal SDK's own metrics, from its Prometheus exporter.
    expect(text).toMatch(/^temporal_\w+/m);
    // One exposition: no metric family is declared twice.
    const types = text.split('\n').filter((l) => l.startsWith('# TYPE '));
    expect(new Set(types.map((l) => l.split(' ')[2])).size).toBe(types.length);
  });
});
