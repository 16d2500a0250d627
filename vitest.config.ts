import { defineConfig } from 'vitest/config';

/** Test tiers live in their own folders; each runs in forked processes (Temporal's native runtime is per process). */
export default defineConfig({
  test: {
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 180_000,
    include: ['test/**/*.test.ts'],
    // libvirt (the hypervisor tier's) is a machine-wide daemon: one for the run, not one per file.
    globalSetup: ['test/support/libvirt-global-setup.ts'],
    // KVM VMs are records in every tier but the hypervisor tier's, which asks for libvirt itself: a real domain
    // per VM that the API, fault and cluster tiers create would be QEMU processes by the hundred on two cores.
    // Services those tests spawn inherit it.
    env: { KVM_COMPUTE: 'none' },
    // Two cores: integration files each start PostgreSQL and a Temporal server, so keep parallelism low.
    maxWorkers: 2,
    fileParallelism: true,
  },
});
