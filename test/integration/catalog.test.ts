import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { seedCatalog } from '../../db/catalog.js';
import { startTestStack, type TestStack } from '../../harness/stack.js';

/** Catalog seeding on a database that an earlier process (another data directory) already seeded. */
describe('catalog seeding', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startTestStack({ roles: [] });
  });
  afterAll(async () => {
    await stack?.stop();
  });

  const storagePaths = async () =>
    (await stack.pool.query(`SELECT name, path FROM storage_pools WHERE hypervisor = 'KVM' UNION ALL SELECT name, path FROM image_stores ORDER BY name`)).rows;

  it('the same data directory again: nothing to report, nothing duplicated', async () => {
    const before = await storagePaths();
    expect(await seedCatalog(stack.pool, stack.dataDir)).toEqual([]);
    expect(await storagePaths()).toEqual(before);
    expect(before.map((r) => r.path)).toEqual([
      join(stack.dataDir, 'primary', 'kvm-primary-1'),
      join(stack.dataDir, 'primary', 'kvm-primary-2'),
      join(stack.dataDir, 'secondary'),
    ]);
  });

  it('another data directory: the first one\'s paths stay, and each difference is reported', async () => {
    const before = await storagePaths();
    const mismatches = await seedCatalog(stack.pool, '/srv/other-volsnap');
    expect(await storagePaths()).toEqual(before);
    expect(mismatches).toEqual([
      { table: 'storage_pools', name: 'kvm-primary-1', inDatabase: join(stack.dataDir, 'primary', 'kvm-primary-1'), fromThisProcess: '/srv/other-volsnap/primary/kvm-primary-1' },
      { table: 'storage_pools', name: 'kvm-primary-2', inDatabase: join(stack.dataDir, 'primary', 'kvm-primary-2'), fromThisProcess: '/srv/other-volsnap/primary/kvm-primary-2' },
      { table: 'image_stores', name: 'secondary-1', inDatabase: join(stack.dataDir, 'secondary'), fromThisProcess: '/srv/other-volsnap/secondary' },
    ]);
  });
});
