import { execFile } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { chromium, type Browser, type Locator, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../../api/app.js';
import { listen } from '../../api/server.js';
import { silentLogger } from '../../observability/logger.js';
import { installTemporalRuntime } from '../../app/runtime.js';
import { startTestStack, type TestStack } from '../../harness/stack.js';

const RESULTS = resolve(import.meta.dirname, '..', '..', 'test-results');
const MiB = 1024 * 1024;
const ADMIN_KEY = 'browser-admin-key';
const BACKUP_DONE_MS = 60_000;
const UI_MS = 10_000;

// playwright-core has no assertion library: small waiting helpers over vitest's expect.poll.
const visible = (l: Locator, timeout = UI_MS) => l.waitFor({ state: 'visible', timeout });
const hidden = (l: Locator, timeout = UI_MS) => l.waitFor({ state: 'hidden', timeout });
const poll = <T>(fn: () => Promise<T>, timeout = UI_MS) => expect.poll(fn, { timeout, interval: 100 });
// (Browser-side code sees `any`: the test is compiled without the DOM library.)
const isFocused = (l: Locator) => l.evaluate((el: any) => el === (globalThis as any).document.activeElement);
/** The text of the elements named by aria-describedby, as assistive technology reads it. */
const description = (l: Locator) =>
  l.evaluate((el: any): string => {
    const doc = (globalThis as any).document;
    const ids: string[] = (el.getAttribute('aria-describedby') ?? '').split(/\s+/);
    return ids.map((id) => doc.getElementById(id)?.textContent ?? '').join(' ').trim();
  });

/**
 * The web page at / against the real stack, in Chromium. Backups are slowed (2 MiB/s, 16 MiB of data in the
 * ROOT disk: about 8 s each) so that the page can be watched while a snapshot is BackingUp.
 */
describe('web page: Create Volume Snapshot dialog and live backup progress (Chromium)', () => {
  let stack: TestStack;
  let server: Awaited<ReturnType<typeof listen>>;
  let base: string;
  let browser: Browser;
  let page: Page;
  let userKey: string;
  let vmCard: Locator;
  let rootDisk: Locator;
  let rootName: string;
  const problems: string[] = [];
  let navigations = 0;

  const api = async (method: string, path: string, key: string, body?: unknown) => {
    const res = await fetch(base + path, {
      method,
      headers: { authorization: `Bearer ${key}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    const json = (await res.json()) as any;
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  };
  const shot = (name: string) => page.screenshot({ path: join(RESULTS, `snapshot-page-${name}.png`), fullPage: true });
  const dialog = () => page.getByRole('dialog', { name: 'Create Volume Snapshot' });
  const toasts = () => page.getByRole('status', { name: 'Notifications' });
  const snapshotRow = (name: string) => rootDisk.getByRole('listitem', { name, exact: true });

  async function openDialog(): Promise<Locator> {
    await rootDisk.getByRole('button', { name: 'Take snapshot' }).click();
    const d = dialog();
    await visible(d);
    return d;
  }

  beforeAll(async () => {
    installTemporalRuntime(silentLogger, false);
    mkdirSync(RESULTS, { recursive: true });
    stack = await startTestStack({ env: { ADMIN_API_KEY: ADMIN_KEY, BACKUP_RATE_LIMIT_BYTES_PER_SEC: String(2 * MiB) } });
    server = await listen(createApp(stack), '127.0.0.1', 0, silentLogger);
    base = `http://127.0.0.1:${server.port}`;
    userKey = (await api('POST', '/api/v1/accounts', ADMIN_KEY, { name: 'page-user', role: 'user' })).apiKey;
    // Full copies, rate-limited: these tests watch backups in flight, and a delta on the volume's previous backup
    // would finish before the page could show one (incremental backups have tests of their own).
    await api('PUT', '/api/v1/configurations/backup.incremental', ADMIN_KEY, { value: 0 });

    browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(`console: ${m.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
    page.on('framenavigated', (f) => {
      if (f === page.mainFrame()) navigations++;
    });

    // A fresh user: sign in with the API key, create a VM with the form.
    await page.goto(`${base}/`);
    await page.getByLabel('API key').fill(userKey);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await visible(page.getByRole('heading', { name: 'Virtual machines' }));
    const form = page.getByRole('region', { name: 'Create VM' });
    await form.getByLabel('Name', { exact: true }).fill('web-1');
    await form.getByLabel('Root disk size (MiB)').fill('32');
    await form.getByRole('button', { name: 'Create VM' }).click();
    vmCard = page.getByRole('article', { name: 'web-1' });
    await visible(vmCard);

    // Give the ROOT disk data, as a guest would, so that its backup takes a few seconds.
    // Host paths are for admins (users never see them): the admin's answer names the image.
    const [vm] = (await api('GET', '/api/v1/vms', ADMIN_KEY)) as Array<{ volumes: Array<{ type: string; name: string; path: string }> }>;
    const root = vm!.volumes.find((v) => v.type === 'ROOT')!;
    await promisify(execFile)('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xab 0 16M', root.path]);
    rootName = root.name;
    rootDisk = vmCard.getByRole('region', { name: rootName });
    await visible(rootDisk.getByText('No snapshots yet.'));
    await shot('signed-in');
  });

  afterAll(async () => {
    await browser?.close();
    await server?.close();
    await stack?.stop();
  });

  it('asynchronous backup: "created" at once while the backup runs, then BackedUp live', async () => {
    const d = await openDialog();
    expect(await d.getByLabel('Asynchronous backup').isChecked()).toBe(false);
    await d.getByLabel('Name').fill('async-1');
    await d.getByLabel('Asynchronous backup').check();
    await d.getByRole('button', { name: 'Create' }).click();
    await hidden(d);

    await visible(toasts().getByText('Snapshot async-1 created on primary storage; backing up…'));
    const row = snapshotRow('async-1');
    const bar = row.getByRole('progressbar', { name: 'Backup progress of async-1' });
    await visible(bar);
    await visible(row.getByText('BackingUp', { exact: true }));
    await visible(row.getByText('attempt 1 of 3'));
    // Bytes done of the volume's 32 MiB (qemu-img's rate limit throttles after it reports, so the count may sit at 0).
    expect(await bar.evaluate((el: any): number => el.max)).toBe(32 * MiB);
    await visible(row.getByText(/^\S+ \S+ of 32\.0 MiB \(\d+%\)$/));
    await shot('async-backing-up');

    await visible(row.getByText('BackedUp', { exact: true }), BACKUP_DONE_MS);
    expect(await bar.count()).toBe(0);
    await visible(toasts().getByText('Snapshot async-1 backed up to secondary storage.'));
    expect(navigations, 'the page updated without reloading').toBe(1);
    await shot('async-backed-up');
  });

  it('synchronous (unticked): the dialog waits, busy, until the backup completes', async () => {
    const d = await openDialog();
    await d.getByLabel('Name').fill('sync-1');
    expect(await d.getByLabel('Asynchronous backup').isChecked()).toBe(false);
    const create = d.getByRole('button', { name: 'Create' });
    await create.click();

    await poll(() => create.isDisabled()).toBe(true);
    expect(await d.locator('form').getAttribute('aria-busy')).toBe('true');
    await visible(d.getByText(/Waiting for the backup to complete/));
    // The snapshot exists on primary long before the answer: the notification says so meanwhile.
    await visible(toasts().getByText('Snapshot sync-1 created on primary storage; backing up…'));
    await visible(d.getByText(/snapshot sync-1: .* of 32\.0 MiB \(\d+%\), attempt 1 of 3/), BACKUP_DONE_MS);
    expect(await d.isVisible()).toBe(true);
    expect(await create.isDisabled()).toBe(true);
    await shot('sync-dialog-waiting');

    await hidden(d, BACKUP_DONE_MS);
    await visible(snapshotRow('sync-1').getByText('BackedUp', { exact: true }));
    await poll(() => isFocused(rootDisk.getByRole('button', { name: 'Take snapshot' }))).toBe(true);
    await shot('sync-backed-up');
  });

  it('an action the backup forbids is disabled and says why; keyboard opens and Escape closes the dialog', async () => {
    // Keyboard: Enter on "Take snapshot" opens the dialog with the name field focused; Escape closes it.
    await rootDisk.getByRole('button', { name: 'Take snapshot' }).focus();
    await page.keyboard.press('Enter');
    const d = dialog();
    await visible(d);
    await poll(() => isFocused(d.getByLabel('Name'))).toBe(true);
    await page.keyboard.press('Escape');
    await hidden(d);
    await poll(() => isFocused(rootDisk.getByRole('button', { name: 'Take snapshot' }))).toBe(true);

    await openDialog();
    await d.getByLabel('Name').fill('async-2');
    await d.getByLabel('Asynchronous backup').check();
    await d.getByRole('button', { name: 'Create' }).click();
    await hidden(d);

    const destroy = vmCard.getByRole('button', { name: 'Destroy' });
    await poll(() => destroy.isDisabled()).toBe(true);
    expect(await destroy.getAttribute('title')).toMatch(/VM action destroy is not allowed while snapshot .* is being backed up/);
    // Visible and as the button's description, with the snapshot and disk named (the reasons box is filled in the
    // render after the one that disables the button).
    await poll(() => description(destroy)).toBe(
      `Destroy: VM action destroy is not allowed while snapshot "async-2" of volume "${rootName}" is being backed up: ` +
        'it is allowed only while a DATADISK backs up, and this is the ROOT disk',
    );
    await visible(vmCard.getByText(/VM action destroy is not allowed while snapshot/));
    expect(await vmCard.getByRole('button', { name: 'Reinstall' }).isDisabled()).toBe(true);
    // The seed's list runs in parallel: stop stays available.
    expect(await vmCard.getByRole('button', { name: 'Stop' }).isEnabled()).toBe(true);
    await visible(snapshotRow('async-2').getByText('BackingUp', { exact: true }));
    await shot('destroy-disabled-during-backup');

    await visible(snapshotRow('async-2').getByText('BackedUp', { exact: true }), BACKUP_DONE_MS);
    await poll(() => destroy.isEnabled()).toBe(true);
    expect(await vmCard.getByText(/not allowed while snapshot/).count()).toBe(0);
  });

  it('a failing backup shows its attempt, next retry time and error, then the failure notification', async () => {
    // Backups fail at once (the image store lies under a regular file) and are retried every 4 s.
    await api('PUT', '/api/v1/configurations/backup.retry.interval', ADMIN_KEY, { value: 4 });
    const { rows } = await stack.pool.query<{ path: string }>('SELECT path FROM image_stores ORDER BY created LIMIT 1');
    const blocker = join(stack.dataDir, 'not-a-directory');
    writeFileSync(blocker, 'backups cannot be written under a regular file\n');
    await stack.pool.query('UPDATE image_stores SET path = $1', [join(blocker, 'x')]);
    try {
      const d = await openDialog();
      await d.getByLabel('Name').fill('doomed-1');
      await d.getByLabel('Asynchronous backup').check();
      await d.getByRole('button', { name: 'Create' }).click();
      await hidden(d);

      const row = snapshotRow('doomed-1');
      await visible(row.getByText('attempt 1 of 3'));
      await visible(row.getByText(/^next retry at .+ \((in \d+ s|now)\)$/));
      await visible(row.getByText(/^Last attempt failed: .+/));
      await visible(toasts().getByText(/^Snapshot doomed-1: backup attempt 1 of 3 failed: .+; next attempt at .+/));
      await shot('backup-retrying');

      await visible(row.getByText('attempt 2 of 3'), 20_000);
      await visible(row.getByText('Error', { exact: true }), 30_000);
      await visible(toasts().getByText(/Backup of snapshot doomed-1 failed: .+/));
      await shot('backup-failed');
    } finally {
      await stack.pool.query('UPDATE image_stores SET path = $1', [rows[0]!.path]);
      await api('PUT', '/api/v1/configurations/backup.retry.interval', ADMIN_KEY, { value: 300 });
    }
  });

  it('escapes user text, fits a narrow screen, and logs no console errors', async () => {
    // A VM made elsewhere (the API) shows up live, its markup-looking name as plain text.
    await api('POST', '/api/v1/vms', userKey, { name: '<img src=x onerror=alert(1)>', hypervisor: 'KVM', rootDiskSizeBytes: MiB });
    await visible(page.getByRole('heading', { name: '<img src=x onerror=alert(1)>', exact: true }));
    expect(await page.locator('img').count()).toBe(0);

    // The assets are served from web/ only, with their types.
    const asset = await fetch(`${base}/ui/js/main.js`);
    expect(asset.headers.get('content-type')).toBe('text/javascript; charset=utf-8');
    for (const path of ['/ui/..%2fpackage.json', '/ui/%2e%2e/api/ui.ts', '/ui/.hidden.js', '/ui/js']) {
      expect((await fetch(base + path)).status, path).toBe(404);
    }

    await page.setViewportSize({ width: 390, height: 844 });
    await visible(vmCard);
    expect(await page.evaluate(() => (globalThis as any).document.documentElement.scrollWidth <= (globalThis as any).innerWidth)).toBe(true);
    await shot('narrow');

    expect(navigations).toBe(1);
    expect(problems).toEqual([]);
  });
});
