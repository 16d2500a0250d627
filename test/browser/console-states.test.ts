import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { consoleLogOf } from '../../services/vm-domain.js';
import { chromium, type Browser, type Locator, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../../api/app.js';
import { listen } from '../../api/server.js';
import { silentLogger } from '../../observability/logger.js';
import { installTemporalRuntime } from '../../app/runtime.js';
import { startTestStack, type TestStack } from '../../harness/stack.js';

const RESULTS = resolve(import.meta.dirname, '..', '..', 'test-results');
const MiB = 1024 * 1024;
const ADMIN_KEY = 'states-admin-key';
const UI_MS = 15_000;
const BACKUP_MS = 60_000;
const visible = (l: Locator, timeout = UI_MS) => l.first().waitFor({ state: 'visible', timeout });
const hidden = (l: Locator, timeout = UI_MS) => l.first().waitFor({ state: 'hidden', timeout });
const poll = <T>(fn: () => Promise<T>, timeout = UI_MS) => expect.poll(fn, { timeout, interval: 100 });

/**
 * The console where a newcomer tripped (issue 28), in Chromium against the real stack: a wrong key on the first
 * sign-in, deleted volumes among the detached ones, a snapshot whose backup failed (its copies, its size, its
 * error as a user and as the admin), and the admin's tables, which name each object's account.
 */
describe('web console: sign-in, deleted volumes, a failed backup, the admin\'s account column (Chromium)', () => {
  let stack: TestStack;
  let server: Awaited<ReturnType<typeof listen>>;
  let base: string;
  let browser: Browser;
  let page: Page;
  let alice: string;
  let failedId: string;
  let aliceVmId: string;
  const problems: string[] = [];

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
  const shot = (name: string) => page.screenshot({ path: join(RESULTS, `console-states-${name}.png`), fullPage: true });
  const go = async (view: string, heading: string) => {
    await page.getByRole('navigation', { name: 'Views' }).getByRole('link', { name: view, exact: true }).click();
    await visible(page.getByRole('heading', { name: heading, exact: true }));
  };
  const signIn = async (key: string) => {
    await page.getByLabel('API key').fill(key);
    await page.getByRole('button', { name: 'Sign in' }).click();
  };
  const signOut = async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await visible(page.getByRole('button', { name: 'Sign in' }));
  };
  const detached = () => page.getByRole('region', { name: 'Detached volumes' });
  const fact = (detail: Locator, term: string) => detail.locator('dt', { hasText: term }).locator('xpath=following-sibling::dd[1]');
  const noPageScroll = () => page.evaluate(() => (globalThis as any).document.documentElement.scrollWidth <= (globalThis as any).innerWidth);

  beforeAll(async () => {
    installTemporalRuntime(silentLogger, false);
    mkdirSync(RESULTS, { recursive: true });
    stack = await startTestStack({ env: { ADMIN_API_KEY: ADMIN_KEY } });
    server = await listen(createApp(stack), '127.0.0.1', 0, silentLogger);
    base = `http://127.0.0.1:${server.port}`;
    alice = (await api('POST', '/api/v1/accounts', ADMIN_KEY, { name: 'alice', role: 'user' })).apiKey;
    const bob = (await api('POST', '/api/v1/accounts', ADMIN_KEY, { name: 'bob', role: 'user' })).apiKey;

    // Two VMs of one name, in two accounts: only the admin sees both, and tells them apart by account.
    aliceVmId = (await api('POST', '/api/v1/vms', alice, { name: 'web-1', hypervisor: 'KVM', rootDiskSizeBytes: 4 * MiB, dataDisks: [{ name: 'alice-data', sizeBytes: 4 * MiB }] })).id;
    await api('POST', '/api/v1/vms', bob, { name: 'web-1', hypervisor: 'KVM', rootDiskSizeBytes: 4 * MiB });
    // Alice's detached volumes: one that exists, one deleted, and the ROOT of a VM she destroyed.
    await api('POST', '/api/v1/volumes', alice, { name: 'spare-disk', sizeBytes: 2 * MiB });
    const gone = await api('POST', '/api/v1/volumes', alice, { name: 'deleted-disk', sizeBytes: 2 * MiB });
    await api('DELETE', `/api/v1/volumes/${gone.id}`, alice);
    const doomed = await api('POST', '/api/v1/vms', alice, { name: 'short-lived', hypervisor: 'KVM', rootDiskSizeBytes: 2 * MiB });
    await api('POST', `/api/v1/vms/${doomed.id}/actions`, alice, { action: 'destroy' });
    const deletedVolumes = (await api('GET', '/api/v1/volumes?state=Destroyed', alice)) as Array<{ name: string }>;
    expect(deletedVolumes.map((v) => v.name).sort()).toEqual(['deleted-disk', doomed.volumes[0].name].sort());

    browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
    await page.goto(`${base}/`);
  });

  afterAll(async () => {
    await browser?.close();
    await server?.close();
    await stack?.stop();
  });

  it('a wrong key on the first sign-in says the key was wrong; the card says where the admin key is kept', async () => {
    await signIn('vs_not-a-key-anyone-has');
    await visible(page.getByRole('alert').getByText('That API key was not accepted: no account has it. Check the key and try again.'));
    expect(await page.getByText(/Sign in again/).count()).toBe(0);
    const card = page.getByRole('region', { name: 'Sign in' });
    await visible(card.getByText(/ADMIN_API_KEY/));
    await visible(card.getByText(/admin-api-key/));
    await shot('wrong-key');
  });

  it('deleted volumes (a deleted disk, a destroyed VM\'s ROOT) are not listed as detached', async () => {
    await signIn(alice);
    await visible(page.getByRole('heading', { name: 'Virtual machines' }));
    await visible(detached().getByRole('heading', { name: 'spare-disk' }));
    expect(await detached().getByRole('heading', { name: 'deleted-disk' }).count()).toBe(0);
    expect(await detached().getByRole('heading', { name: /^short-lived/ }).count()).toBe(0);
    // One detached volume, one "Take snapshot" button: none offered on a volume that no longer exists.
    expect(await detached().getByRole('button', { name: 'Take snapshot' }).count()).toBe(1);
    await shot('detached');
  });

  it('a snapshot whose backup failed: its copy Failed, no size "not backed up yet", the error shortened for a user', async () => {
    // One attempt, and backups fail at once (the image store lies under a regular file).
    await api('PUT', '/api/v1/configurations/backup.max.attempts', ADMIN_KEY, { value: 1 });
    const { rows } = await stack.pool.query<{ path: string }>('SELECT path FROM image_stores ORDER BY created LIMIT 1');
    const blocker = join(stack.dataDir, 'not-a-directory');
    writeFileSync(blocker, 'backups cannot be written under a regular file\n');
    await stack.pool.query('UPDATE image_stores SET path = $1', [join(blocker, 'store')]);
    try {
      const vm = (await api('GET', '/api/v1/vms', alice)).find((v: any) => v.name === 'web-1');
      const data = vm.volumes.find((v: any) => v.type === 'DATADISK');
      failedId = (await api('POST', `/api/v1/volumes/${data.id}/snapshots`, alice, { name: 'failed-1', asyncBackup: true })).id;
      await poll(async () => (await api('GET', `/api/v1/snapshots/${failedId}`, alice)).state, BACKUP_MS).toBe('Error');
    } finally {
      await stack.pool.query('UPDATE image_stores SET path = $1', [rows[0]!.path]);
      await api('PUT', '/api/v1/configurations/backup.max.attempts', ADMIN_KEY, { value: 3 });
    }

    await page.goto(`${base}/#/snapshots/${failedId}`);
    const detail = page.getByRole('article', { name: 'Snapshot failed-1' });
    await visible(detail);
    await visible(detail.getByText('Error', { exact: true }));
    // Its copy in the image store never finished: Failed, not "Creating" until storage GC runs.
    const imageRow = detail.locator('tbody tr').filter({ hasText: 'Image store (backup)' });
    await visible(imageRow);
    expect(await imageRow.locator('td').first().textContent()).toBe('Failed');
    await poll(() => fact(detail, 'Physical size').textContent()).toBe('none: the backup failed');
    // A user never reads a host path: the error names a path's last segment only.
    const error = await fact(detail, 'Last error').textContent();
    expect(error).toMatch(/…\//);
    expect(error).not.toContain(stack.dataDir);
    await shot('failed-user');
  });

  it('the admin: the failed snapshot\'s error whole, as in its events; every table and VM card names the account', async () => {
    await signOut();
    await signIn(ADMIN_KEY);
    await visible(page.getByText('Signed in as admin'));

    // The admin reads the failed snapshot's error with the whole path, as its ERROR event has it.
    const whole = join(stack.dataDir, 'not-a-directory', 'store');
    const events = (await api('GET', '/api/v1/events?since=0&limit=1000', ADMIN_KEY)) as Array<{ resourceId: string; level: string; description: string }>;
    expect(events.find((e) => e.resourceId === failedId && e.level === 'ERROR')?.description).toContain(whole);
    await page.goto(`${base}/#/snapshots/${failedId}`);
    const detail = page.getByRole('article', { name: 'Snapshot failed-1' });
    await visible(detail);
    await poll(() => fact(detail, 'Last error').textContent()).toContain(whole);
    await visible(fact(detail, 'Account').getByText('alice', { exact: true }));
    await shot('failed-admin');

    // Two VMs "web-1": one card each, told apart by the account.
    await go('Virtual machines', 'Virtual machines');
    const cards = page.getByRole('article', { name: 'web-1' });
    await poll(() => cards.count()).toBe(2);
    const accounts = await cards.evaluateAll((els: any[]) =>
      els.map((el) => [...el.querySelectorAll('dt')].find((dt: any) => dt.textContent === 'Account')?.nextElementSibling?.textContent ?? null).sort(),
    );
    expect(accounts).toEqual(['alice', 'bob']);

    await go('Snapshots', 'Snapshots');
    const header = page.locator('#snapshots-table thead th');
    await visible(header.filter({ hasText: 'Account' }));
    const row = page.locator('#snapshots-table tbody tr').filter({ has: page.getByRole('link', { name: /^Snapshot failed-1:/ }) });
    await visible(row.getByText('alice', { exact: true }));

    await go('Volumes', 'Volumes');
    await visible(page.locator('#volumes-table thead th').filter({ hasText: 'Account' }));
    await visible(page.locator('#volumes-table tbody tr').filter({ hasText: 'spare-disk' }).getByText('alice', { exact: true }));
    await go('Events', 'Events');
    await visible(page.locator('#events-table thead th').filter({ hasText: 'Account' }));


    // At 800 px the tables scroll inside their box: the page never scrolls sideways past its header.
    await page.setViewportSize({ width: 800, height: 900 });
    for (const [view, heading] of [['Snapshots', 'Snapshots'], ['Volumes', 'Volumes'], ['Events', 'Events'], ['Backups in flight', 'Backups in flight']] as const) {
      await go(view, heading);
      await poll(noPageScroll).toBe(true);
    }
    await shot('admin-800');

    // Signed out, the account column goes with the admin: a user's tables have none.
    await page.setViewportSize({ width: 1280, height: 900 });
    await signOut();
    await signIn(alice);
    await go('Snapshots', 'Snapshots');
    await visible(page.locator('#snapshots-table tbody tr').first());
    await hidden(page.locator('#snapshots-table thead th').filter({ hasText: 'Account' }));
    expect(problems).toEqual([]);
  });

  it("the admin reads a VM's console in its card, and refreshes it; a user's card has no console", async () => {
    // What QEMU appends to the VM's console log while its domain runs (these tiers keep VMs as records).
    const log = consoleLogOf(stack.consoleDir, aliceVmId);
    mkdirSync(dirname(log), { recursive: true });
    writeFileSync(log, 'volsnap-guest: disks vda vdb\nvolsnap-guest: ready\n');
    const aliceCard = () => page.locator(`[data-vm-card="${aliceVmId}"]`);
    if (await page.getByRole('button', { name: 'Sign out' }).isVisible()) await signOut();
    await signIn(alice);
    await go('Virtual machines', 'Virtual machines');
    await visible(aliceCard());
    expect(await aliceCard().locator('details.console').count()).toBe(0);

    await signOut();
    await signIn(ADMIN_KEY);
    await go('Virtual machines', 'Virtual machines');
    const panel = aliceCard().locator('details.console');
    await visible(panel);
    await panel.locator('summary').click();
    await poll(() => panel.locator('pre.console-tail').textContent()).toContain('volsnap-guest: ready');
    appendFileSync(log, 'volsnap-guest: disk added vdc\n');
    await panel.getByRole('button', { name: 'Refresh' }).click();
    await poll(() => panel.locator('pre.console-tail').textContent()).toContain('disk added vdc');
    // Open across the card's re-renders (the VM's state changing re-draws it), until the admin closes it.
    await panel.evaluate((el: any) => (el.dataset.before = 'yes'));
    await api('POST', `/api/v1/vms/${aliceVmId}/actions`, ADMIN_KEY, { action: 'stop' });
    await visible(aliceCard().locator('.badge', { hasText: 'Stopped' }));
    expect(await aliceCard().locator('details.console[data-before]').count()).toBe(0);
    expect(await aliceCard().locator('details.console').getAttribute('open')).not.toBeNull();
    await poll(() => aliceCard().locator('pre.console-tail').textContent()).toContain('disk added vdc');
    await shot('vm-console-admin');
    expect(problems).toEqual([]);
  });
});
