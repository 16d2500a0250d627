import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { chromium, type Browser, type Locator, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../../api/app.js';
import { listen } from '../../api/server.js';
import { silentLogger } from '../../observability/logger.js';
import { installTemporalRuntime } from '../../app/runtime.js';
import { startTestStack, type TestStack } from '../../harness/stack.js';

const RESULTS = resolve(import.meta.dirname, '..', '..', 'test-results');
const MiB = 1024 * 1024;
const ADMIN_KEY = 'console-admin-key';
const UI_MS = 15_000;
const visible = (l: Locator, timeout = UI_MS) => l.first().waitFor({ state: 'visible', timeout });
const hidden = (l: Locator, timeout = UI_MS) => l.first().waitFor({ state: 'hidden', timeout });
const poll = <T>(fn: () => Promise<T>, timeout = UI_MS) => expect.poll(fn, { timeout, interval: 100 });
const description = (l: Locator) =>
  l.evaluate((el: any): string => {
    const doc = (globalThis as any).document;
    return (el.getAttribute('aria-describedby') ?? '').split(/\s+/).map((id: string) => doc.getElementById(id)?.textContent ?? '').join(' ').trim();
  });
// axe-core, injected into the page (npm `axe-core`, a devDependency).
const AXE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

/**
 * The console (web page) as an operator uses it, in Chromium against the real stack: every view, the snapshot
 * detail and its actions, a failing backup, the service going down and coming back, another account's objects
 * never shown, and axe-core on each view.
 */
describe('web console: views, snapshot detail and actions (Chromium)', () => {
  let stack: TestStack;
  let server: Awaited<ReturnType<typeof listen>>;
  let base: string;
  let port: number;
  let stopping = false;
  let browser: Browser;
  let page: Page;
  let alice: string;
  let bob: string;
  let vmId: string;
  const problems: string[] = [];
  const axeFindings: Record<string, unknown[]> = {};

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
  const shot = (name: string) => page.screenshot({ path: join(RESULTS, `console-${name}.png`), fullPage: true });
  const go = async (view: string, heading: string) => {
    await page.getByRole('navigation', { name: 'Views' }).getByRole('link', { name: view, exact: true }).click();
    await visible(page.getByRole('heading', { name: heading, exact: true }));
  };
  /** axe-core over the page as it is: no violations of WCAG 2.x A/AA rules. */
  async function axe(name: string): Promise<void> {
    // Evaluated through the DevTools protocol: the page's CSP (no inline script) stays as served.
    if (!(await page.evaluate(() => Boolean((globalThis as any).axe)))) await page.evaluate(AXE);
    const violations = await page.evaluate(async () => {
      const r = await (globalThis as any).axe.run((globalThis as any).document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] } });
      return r.violations.map((v: any) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n: any) => n.target.join(' ')).slice(0, 5) }));
    });
    axeFindings[name] = violations;
    expect(violations, `axe on ${name}`).toEqual([]);
  }
  const snapRow = (name: string) => page.locator('#snapshots-table tbody tr').filter({ has: page.getByRole('link', { name: new RegExp(`^Snapshot ${name}:`) }) });

  beforeAll(async () => {
    installTemporalRuntime(silentLogger, false);
    mkdirSync(RESULTS, { recursive: true });
    stack = await startTestStack({ env: { ADMIN_API_KEY: ADMIN_KEY } });
    server = await listen(createApp(stack, { isStopping: () => stopping }), '127.0.0.1', 0, silentLogger);
    port = server.port;
    base = `http://127.0.0.1:${port}`;
    alice = (await api('POST', '/api/v1/accounts', ADMIN_KEY, { name: 'alice', role: 'user' })).apiKey;
    bob = (await api('POST', '/api/v1/accounts', ADMIN_KEY, { name: 'bob', role: 'user' })).apiKey;

    // Bob's VM and snapshot: never shown to Alice.
    const bobVm = await api('POST', '/api/v1/vms', bob, { name: 'bob-vm', hypervisor: 'KVM', rootDiskSizeBytes: 4 * MiB });
    await api('POST', `/api/v1/volumes/${bobVm.volumes[0].id}/snapshots`, bob, { name: 'bob-snap' });
    // Alice's VM with a data disk, and a backed-up snapshot of its ROOT disk.
    const vm = await api('POST', '/api/v1/vms', alice, { name: 'vm-a', hypervisor: 'KVM', rootDiskSizeBytes: 8 * MiB, dataDisks: [{ name: 'data-a', sizeBytes: 4 * MiB }] });
    vmId = vm.id;
    await api('POST', `/api/v1/volumes/${vm.volumes[0].id}/snapshots`, alice, { name: 'snap-1' });

    browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
    await page.goto(`${base}/`);
    await page.getByLabel('API key').fill(alice);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await visible(page.getByRole('heading', { name: 'Virtual machines' }));
  });

  afterAll(async () => {
    writeFileSync(join(RESULTS, 'console-axe.json'), JSON.stringify(axeFindings, null, 2));
    await browser?.close();
    await server?.close();
    await stack?.stop();
  });

  it('shows the signed-in account and the VMs view; axe finds nothing', async () => {
    await visible(page.getByText('Signed in as alice'));
    await visible(page.getByRole('article', { name: 'vm-a' }));
    await visible(page.getByText('Every action is available.'));
    expect(await page.getByText('bob-vm').count()).toBe(0);
    await shot('vms');
    await axe('vms');
  });

  it('Snapshots: a table with volume, VM, physical and virtual size; sorting and filters; no other account\'s', async () => {
    await go('Snapshots', 'Snapshots');
    const row = snapRow('snap-1');
    await visible(row);
    await visible(row.getByText('BackedUp', { exact: true }));
    await visible(row.getByText('vm-a', { exact: true }));
    await visible(row.getByText('8.0 MiB', { exact: true })); // virtual
    expect(await page.getByText('bob-snap').count()).toBe(0);
    // Sorting by name toggles aria-sort.
    const nameHeader = page.locator('#snapshots-table thead th').filter({ hasText: 'Name' });
    await nameHeader.getByRole('button').click();
    expect(await nameHeader.getAttribute('aria-sort')).toBe('ascending');
    await nameHeader.getByRole('button').click();
    expect(await nameHeader.getAttribute('aria-sort')).toBe('descending');
    // Filters go to the API (?state=, ?q=).
    const filters = page.getByRole('group', { name: 'Filter snapshots' });
    await filters.getByLabel('State').selectOption('Error');
    await visible(page.getByText('No snapshots match.'));
    await filters.getByLabel('State').selectOption('');
    await filters.getByLabel('Text').fill('snap-1');
    await visible(row);
    await filters.getByLabel('Text').fill('');
    await shot('snapshots');
    await axe('snapshots');
  });

  it('snapshot detail: facts, copies with checksum, no host paths; revert disabled with the reason while the VM runs', async () => {
    await snapRow('snap-1').getByRole('link').click();
    const detail = page.getByRole('article', { name: 'Snapshot snap-1' });
    await visible(detail);
    await visible(detail.getByText('Physical size (backup written)'));
    await visible(detail.getByText('Virtual size (disk)'));
    await visible(detail.getByText('Image store (backup)'));
    await visible(detail.locator('td code').filter({ hasText: /[0-9a-f]{16,}/ })); // the backup's checksum
    const revert = detail.getByRole('button', { name: 'Revert volume' });
    expect(await revert.getAttribute('aria-disabled')).toBe('true');
    expect(await description(revert)).toBe('Revert volume: Its VM vm-a is running; stop the VM first.');
    expect(await detail.getByRole('button', { name: 'Delete' }).getAttribute('aria-disabled')).toBeNull();
    // Nothing on the page names a host path.
    expect(await page.content()).not.toContain(stack.dataDir);
    await shot('snapshot-detail');
    await axe('snapshot-detail');
  });

  it('revert (confirmed) after the VM stops, and a new volume from the snapshot', async () => {
    await api('POST', `/api/v1/vms/${vmId}/actions`, alice, { action: 'stop' });
    const detail = page.getByRole('article', { name: 'Snapshot snap-1' });
    const revert = detail.getByRole('button', { name: 'Revert volume' });
    await poll(() => revert.getAttribute('aria-disabled')).toBeNull();
    await revert.click();
    const confirm = page.getByRole('dialog', { name: /Revert .* to snapshot snap-1\?/ });
    await visible(confirm);
    await shot('revert-confirm');
    await axe('revert-confirm');
    await confirm.getByRole('button', { name: 'Revert volume' }).click();
    await visible(page.getByText(/Volume .* reverted to snapshot snap-1\./));

    await detail.getByRole('button', { name: 'Create volume' }).click();
    const dialog = page.getByRole('dialog', { name: 'Create volume from snapshot' });
    await visible(dialog);
    await dialog.getByLabel('Name').fill('from-snap');
    await page.keyboard.press('Enter');
    await visible(page.getByText('Volume from-snap created from snapshot snap-1.'));
    await go('Volumes', 'Volumes');
    await visible(page.locator('#volumes-table').getByText('from-snap'));
    expect(await page.locator('#volumes-table').getByText('bob-vm').count()).toBe(0);
    await shot('volumes');
    await axe('volumes');
  });

  it('a failing backup: Backups in flight shows attempt and next retry; the detail the whole error; delete is refused with the reason', async () => {
    await api('PUT', '/api/v1/configurations/backup.retry.interval', ADMIN_KEY, { value: 3600 });
    const { rows } = await stack.pool.query<{ path: string }>('SELECT path FROM image_stores ORDER BY created LIMIT 1');
    const blocker = join(stack.dataDir, 'not-a-directory');
    writeFileSync(blocker, 'backups cannot be written under a regular file\n');
    await stack.pool.query('UPDATE image_stores SET path = $1', [join(blocker, 'x')]);
    try {
      const vm = await api('GET', `/api/v1/vms/${vmId}`, alice);
      await api('POST', `/api/v1/volumes/${vm.volumes[1].id}/snapshots`, alice, { name: 'doomed', asyncBackup: true });
      await visible(page.getByRole('link', { name: 'Backups in flight: 1' }));
      await go('Backups in flight', 'Backups in flight');
      const job = page.locator('#jobs-table tbody tr').filter({ hasText: 'doomed' });
      await visible(job.getByText('1 of 3'), 30_000);
      await visible(job.getByText(/\(in \d+ min \d+ s\)/));
      await shot('jobs');
      await axe('jobs');
      await job.getByRole('link').click();
      const detail = page.getByRole('article', { name: 'Snapshot doomed' });
      await visible(detail);
      await visible(detail.getByText(/unusable/)); // the last error, whole
      const del = detail.getByRole('button', { name: 'Delete' });
      expect(await del.getAttribute('aria-disabled')).toBe('true');
      expect(await description(del)).toMatch(/^Delete: Not possible while the snapshot is being backed up/);
      await shot('snapshot-retrying');
    } finally {
      await stack.pool.query('UPDATE image_stores SET path = $1', [rows[0]!.path]);
    }
  });

  it('delete, confirmed: the snapshot leaves the list; the Events view lists what happened', async () => {
    await page.goto(`${base}/#/snapshots`);
    await visible(snapRow('snap-1'));
    await snapRow('snap-1').getByRole('link').click();
    const detail = page.getByRole('article', { name: 'Snapshot snap-1' });
    await detail.getByRole('button', { name: 'Delete' }).click();
    const confirm = page.getByRole('dialog', { name: 'Delete snapshot snap-1?' });
    await visible(confirm);
    // Escape cancels; nothing is deleted.
    await page.keyboard.press('Escape');
    await hidden(confirm);
    await detail.getByRole('button', { name: 'Delete' }).click();
    await confirm.getByRole('button', { name: 'Delete snapshot' }).click();
    await visible(page.getByText('Snapshot snap-1 deleted.'));
    await hidden(snapRow('snap-1'));

    await go('Events', 'Events');
    await visible(page.locator('#events-table').getByText('snapshot snap-1 deleted'));
    expect(await page.locator('#events-table').getByText(/bob/).count()).toBe(0);
    const filters = page.getByRole('group', { name: 'Filter events' });
    await filters.getByLabel('Level').selectOption('WARN');
    await visible(page.locator('#events-table').getByText(/backup attempt 1 of 3 failed/));
    await filters.getByLabel('Level').selectOption('');
    await shot('events');
    await axe('events');
  });

  it('the service going down and coming back: the page says so and recovers by itself', async () => {
    await go('Virtual machines', 'Virtual machines');
    stopping = true;
    // The stream is cut (as a stopping process does) and every request answers 503.
    await server.close();
    const again = await listen(createApp(stack, { isStopping: () => stopping }), '127.0.0.1', port, silentLogger);
    server = again;
    const banner = page.getByText('Service unavailable, retrying…');
    await visible(banner, 30_000);
    await shot('service-unavailable');
    expect(await page.getByText('internal error').count()).toBe(0);
    stopping = false;
    await hidden(banner, 30_000);
    await visible(page.getByText('Live updates on'), 30_000);
    expect(problems).toEqual([]);
  });

  it('Snapshot all disks: one click snapshots every disk of the VM, each then backed up on its own', async () => {
    await go('Virtual machines', 'Virtual machines');
    const before = ((await api('GET', `/api/v1/snapshots?vmId=${vmId}&limit=1000`, alice)) as unknown[]).length;
    const card = page.getByRole('article', { name: 'vm-a' });
    await card.getByRole('button', { name: 'Snapshot all disks' }).click();
    // These tiers keep VMs as records: no QEMU writes to the disks, so they are taken one after the other.
    await visible(page.getByRole('status', { name: 'Notifications' }).getByText('VM vm-a: 2 disk snapshots taken one after the other (nothing writes to them); backing up.'));
    const after = (await api('GET', `/api/v1/snapshots?vmId=${vmId}&limit=1000`, alice)) as Array<{ volumeId: string; createdAt: string }>;
    expect(after.length).toBe(before + 2);
    const newest = [...after].sort((a, b) => b.createdAt.localeCompare(a.createdAt)).slice(0, 2);
    expect(new Set(newest.map((x) => x.volumeId)).size).toBe(2);
    expect(problems).toEqual([]);
  });
});
