import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { updateSetting } from '../../db/settings.js';
import { getSnapshot } from '../../db/snapshots.js';
import { silentLogger } from '../../observability/logger.js';
import { installTemporalRuntime } from '../../app/runtime.js';
import { eventually, insertAccount, insertVolume } from '../support/fixtures.js';
import { startTestStack, type TestStack } from '../../harness/stack.js';

const RESULTS = resolve(import.meta.dirname, '..', '..', 'test-results');
const MiB = 1024 * 1024;

/** Operators find a snapshot's workflow in the Temporal Web UI by its search attributes. */
describe('Temporal Web UI (embedded dev server, Chromium)', () => {
  let stack: TestStack;
  let browser: Browser;
  let page: Page;

  beforeAll(async () => {
    installTemporalRuntime(silentLogger, false);
    stack = await startTestStack();
    expect(stack.devServer?.uiUrl).toBeTruthy();
    mkdirSync(RESULTS, { recursive: true });
    browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
    page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  });
  afterAll(async () => {
    await browser?.close();
    await stack?.stop();
  });

  /** Opens `url` and waits for `text`; the UI's list is eventually consistent, so reload until it shows. */
  async function openUntilVisible(url: string, text: string, timeoutMs = 90_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      await page.goto(url, { waitUntil: 'domcontentloaded' });
      try {
        await page.getByText(text, { exact: false }).first().waitFor({ state: 'visible', timeout: 20_000 });
        return;
      } catch (err) {
        if (Date.now() > deadline) {
          await page.screenshot({ path: join(RESULTS, 'temporal-ui-failure.png'), fullPage: true }).catch(() => undefined);
          throw err;
        }
      }
    }
  }

  /** Waits for `text` on the current page; a screenshot is left behind when it never shows. */
  async function visible(text: string, opts: { exact?: boolean; timeoutMs?: number } = {}): Promise<void> {
    try {
      await page.getByText(text, { exact: opts.exact ?? false }).first().waitFor({ state: 'visible', timeout: opts.timeoutMs ?? 60_000 });
    } catch (err) {
      await page.screenshot({ path: join(RESULTS, 'temporal-ui-failure.png'), fullPage: true }).catch(() => undefined);
      throw err;
    }
  }

  /** Waits for `text` in the page or any of its frames. */
  async function visibleInAnyFrame(text: string, timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (const frame of page.frames()) {
        if (await frame.getByText(text, { exact: false }).first().isVisible().catch(() => false)) return;
      }
      if (Date.now() > deadline) {
        await page.screenshot({ path: join(RESULTS, 'temporal-ui-failure.png'), fullPage: true }).catch(() => undefined);
        throw new Error(`"${text}" did not show in the Web UI within ${timeoutMs} ms`);
      }
      await page.waitForTimeout(250);
    }
  }

  it('lists the snapshot workflow under the query VolumeId="<id>", with its summary and state', async () => {
    const accountId = await insertAccount(stack.pool);
    const vol = await insertVolume(stack.pool, stack.drivers.KVM!, { accountId, sizeBytes: 8 * MiB, withVm: true });
    const { snapshot } = await stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: false, name: 'ui-check' });
    expect(snapshot.status).toBe('BackedUp');
    // Another volume's snapshot must not match the query.
    const other = await insertVolume(stack.pool, stack.drivers.KVM!, { accountId, sizeBytes: 8 * MiB });
    const { snapshot: otherSnap } = await stack.snapshots.requestSnapshot({ accountId, volumeId: other.volumeId, asyncBackup: false });

    const ui = stack.devServer!.uiUrl!;
    const query = `VolumeId="${vol.volumeId}"`;
    await openUntilVisible(`${ui}/namespaces/default/workflows?query=${encodeURIComponent(query)}`, snapshot.workflowId);
    expect(await page.getByText(otherSnap.workflowId).count()).toBe(0);
    await page.screenshot({ path: join(RESULTS, 'temporal-ui-workflows-by-volume.png'), fullPage: true });

    // The workflow page shows the static summary and the current details the workflow set.
    await page.getByRole('link', { name: snapshot.workflowId }).first().click();
    await visible('"state": "BackedUp"');
    await page.screenshot({ path: join(RESULTS, 'temporal-ui-snapshot-workflow.png'), fullPage: true });
    // Summary, static details and the workflow's current details live under "User Metadata".
    await page.getByText('User Metadata', { exact: true }).first().click();
    await visible('Current Details');
    // Summary and details are markdown, rendered by the UI in sandboxed frames.
    // Names an operator reads at a glance (volume, VM, account, size), the ids below them.
    const names = (await stack.pool.query<{ volume: string; vm: string; account: string }>(
      'SELECT v.name AS volume, m.name AS vm, a.name AS account FROM volumes v JOIN virtual_machines m ON m.id = v.vm_id JOIN accounts a ON a.id = v.account_id WHERE v.id = $1',
      [vol.volumeId],
    )).rows[0]!;
    await visibleInAnyFrame(`Snapshot ui-check of ${names.volume} on VM ${names.vm} · ${names.account} · 8.0 MiB · sync backup`);
    await visibleInAnyFrame(`up to 3 attempts, 300 s apart`);
    await visibleInAnyFrame(vol.volumeId);
    await visibleInAnyFrame(`backed up to snapshots/${accountId}/${vol.volumeId}/${snapshot.id}.qcow2`);
    await page.screenshot({ path: join(RESULTS, 'temporal-ui-snapshot-metadata.png'), fullPage: true });
  });

  it('a backup waiting for its next attempt shows attempt, maximum attempts, next retry and last failure', async () => {
    const accountId = await insertAccount(stack.pool);
    const vol = await insertVolume(stack.pool, stack.drivers.KVM!, { accountId, sizeBytes: 8 * MiB });
    const { rows } = await stack.pool.query<{ path: string }>('SELECT path FROM image_stores');
    const storePath = rows[0]!.path;
    const blocker = join(stack.dataDir, 'not-a-directory');
    writeFileSync(blocker, '');
    await updateSetting(stack.pool, 'backup.retry.interval', 3600);
    await stack.pool.query('UPDATE image_stores SET path = $1', [join(blocker, 'x')]);
    let snapshotId: string;
    let workflowId: string;
    try {
      ({ id: snapshotId, workflowId } = (await stack.snapshots.requestSnapshot({ accountId, volumeId: vol.volumeId, asyncBackup: true })).snapshot);
      await eventually(async () => {
        const s = await getSnapshot(stack.pool, snapshotId);
        return s && s.backupAttempts === 1 && s.lastError ? s : undefined;
      }, 60_000, 'the first attempt to fail');
    } finally {
      await stack.pool.query('UPDATE image_stores SET path = $1', [storePath]);
      await updateSetting(stack.pool, 'backup.retry.interval', 300);
    }
    const ui = stack.devServer!.uiUrl!;
    await openUntilVisible(`${ui}/namespaces/default/workflows?query=${encodeURIComponent(`VolumeId="${vol.volumeId}"`)}`, workflowId);
    await page.getByRole('link', { name: workflowId }).first().click();
    // The workflow counts copy attempts itself and waits on a durable timer between them: its current details say
    // which attempt failed, why, and when the next one runs.
    await page.getByText('User Metadata', { exact: true }).first().click();
    await visible('Current Details');
    await visibleInAnyFrame('attempt 1 of 3 failed');
    await visibleInAnyFrame('unusable');
    await visibleInAnyFrame('next attempt in 3600s');
    await page.screenshot({ path: join(RESULTS, 'temporal-ui-pending-backup.png'), fullPage: true });
    await stack.client.workflow.getHandle(workflowId).terminate('test done');
  });

  it('shows the storage-gc schedule', async () => {
    const ui = stack.devServer!.uiUrl!;
    await openUntilVisible(`${ui}/namespaces/default/schedules`, 'storage-gc');
    await page.screenshot({ path: join(RESULTS, 'temporal-ui-schedules.png'), fullPage: true });
  });
});
