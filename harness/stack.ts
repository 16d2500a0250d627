import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadEnv, type Env } from '../config/env.js';
import { silentLogger, type Logger } from '../observability/logger.js';
import { startStack, type Role, type Stack } from '../app/stack.js';
import { installTemporalRuntime } from '../app/runtime.js';
import { restartablePort } from './ports.js';
import { liveKvmVms } from '../db/vms.js';

export interface TestStack extends Stack {
  dataDir: string;
  stop(): Promise<void>;
}

/**
 * A real stack for integration tests: embedded PostgreSQL, a Temporal dev server and the workers, all in a
 * fresh temporary data dir on free ports.
 */
export async function startTestStack(
  opts: { roles?: Role[]; env?: Record<string, string>; logger?: Logger; dataDir?: string } = {},
): Promise<TestStack> {
  const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), 'volsnap-test-'));
  // As root, embedded PostgreSQL runs as a separate `postgres` user, which must be able to reach its files.
  chmodSync(dataDir, 0o755);
  const env: Env = loadEnv({
    VOLSNAP_DATA_DIR: dataDir,
    EMBEDDED_PG_PORT: String(await restartablePort()),
    TEMPORAL_PORT: String(await restartablePort()),
    TEMPORAL_UI_PORT: String(await restartablePort()),
    PORT: '0',
    LOG_LEVEL: 'silent',
    KVM_COMPUTE: process.env.KVM_COMPUTE ?? 'none',
    VM_STOP_TIMEOUT_SECONDS: '5',
    ...opts.env,
  });
  // Without it the SDK's default runtime takes over: it logs to the console, and a script run by tsx (e.g.
  // `npm run record-histories`) exited 0 during start-up, silently. Installed once per process.
  installTemporalRuntime(opts.logger ?? silentLogger);
  const stack = await startStack(env, opts.logger ?? silentLogger, opts.roles ?? ['api', 'worker']);
  return {
    ...stack,
    dataDir,
    async stop() {
      // Domains outlive the service, as on a real host: a test's VMs are powered off with its stack.
      if (stack.compute?.local.available) {
        const driver = stack.compute.reachable()[0]!;
        for (const vm of await liveKvmVms(stack.pool)) await driver.stop(vm.id, { forced: true }).catch(() => undefined);
      }
      await stack.close();
      if (!opts.dataDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
