import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { listen } from '../../api/server.js';
import { silentLogger } from '../../observability/logger.js';
import { startApiHarness, type ApiHarness } from '../api/harness.js';

export const ROOT = resolve(import.meta.dirname, '../..');
export const VENV = join(ROOT, '.tools/venv/bin');
export const CS_CLI = join(VENV, 'cs');

export const ADMIN_CS_KEY = 'test-admin-cloudstack-api-key';
export const ADMIN_CS_SECRET = 'test-admin-cloudstack-secret-key';

export interface Keys {
  key: string;
  secret: string;
}

/** The HTTP app over a real stack, listening on a real port: what CloudStack's clients talk to. */
export interface CloudStackService {
  h: ApiHarness;
  endpoint: string;
  admin: Keys;
  stop(): Promise<void>;
}

export async function startCloudStackService(env: Record<string, string> = {}): Promise<CloudStackService> {
  const h = await startApiHarness({ env: { ADMIN_CLOUDSTACK_API_KEY: ADMIN_CS_KEY, ADMIN_CLOUDSTACK_SECRET_KEY: ADMIN_CS_SECRET, ...env } });
  const http = await listen(h.app, '127.0.0.1', 0, silentLogger);
  return {
    h,
    endpoint: `http://127.0.0.1:${http.port}/client/api`,
    admin: { key: ADMIN_CS_KEY, secret: ADMIN_CS_SECRET },
    async stop() {
      await http.close();
      await h.stop();
    },
  };
}

function run(file: string, args: string[], opts: { env?: Record<string, string>; input?: string; cwd?: string }): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolvePromise) => {
    const child = execFile(file, args, { env: { PATH: process.env.PATH ?? '', ...opts.env }, cwd: opts.cwd ?? tmpdir(), timeout: 180_000, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      resolvePromise({ code, stdout, stderr });
    });
    if (opts.input !== undefined) child.stdin!.end(opts.input);
  });
}

const emptyCwd = () => mkdtempSync(join(tmpdir(), 'volsnap-cs-'));

/** The `cs` command line as an operator runs it (config from CLOUDSTACK_* variables; it polls async jobs). */
export async function csCli(
  endpoint: string,
  keys: Keys,
  args: string[],
  opts: { post?: boolean; env?: Record<string, string> } = {},
): Promise<{ code: number; json: any; stderr: string }> {
  const cwd = emptyCwd();
  const r = await run(CS_CLI, [...(opts.post ? ['--post'] : []), ...args], {
    cwd,
    env: { HOME: cwd, CLOUDSTACK_ENDPOINT: endpoint, CLOUDSTACK_KEY: keys.key, CLOUDSTACK_SECRET: keys.secret, CLOUDSTACK_POLL_INTERVAL: '0.2', CLOUDSTACK_TIMEOUT: '60', ...opts.env },
  });
  let json: any;
  try {
    json = r.stdout.trim() ? JSON.parse(r.stdout) : undefined;
  } catch {
    json = r.stdout;
  }
  return { code: r.code, json, stderr: r.stderr };
}

export interface PyResult {
  ok: boolean;
  result?: any;
  status?: number;
  message?: string;
  error?: any;
}

/** One call through the `cs` Python API (test/client/cs_api.py). */
export async function csPy(
  endpoint: string,
  keys: Keys,
  command: string,
  params: Record<string, unknown> = {},
  opts: { fetchResult?: boolean; fetchList?: boolean; method?: 'get' | 'post' } = {},
): Promise<PyResult> {
  const r = await run(join(VENV, 'python'), [join(ROOT, 'test/client/cs_api.py')], {
    input: JSON.stringify({ endpoint, key: keys.key, secret: keys.secret, command, params, fetch_result: opts.fetchResult ?? false, fetch_list: opts.fetchList ?? false, method: opts.method ?? 'get' }),
  });
  if (r.code !== 0) throw new Error(`cs_api.py failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as PyResult;
}

/** CloudMonkey 5 (PyPI cloudmonkey, Python 2.7 only): its install dir, if setup found a Python 2.7 to put it in. */
export function cloudMonkey(): { python: string; dir: string } | undefined {
  const dir = process.env.VOLSNAP_CLOUDMONKEY_DIR ?? join(ROOT, '.tools/cloudmonkey-py2');
  if (!existsSync(join(dir, 'cloudmonkey'))) return undefined;
  // scripts/setup.sh records the Python 2.7 it installed CloudMonkey with.
  const recorded = existsSync(join(dir, '.python')) ? readFileSync(join(dir, '.python'), 'utf8').trim() : undefined;
  const python = process.env.VOLSNAP_PYTHON2 ?? recorded ?? 'python2.7';
  return { python, dir };
}

export async function runCloudMonkey(cm: { python: string; dir: string }, home: string, args: string[]) {
  return run(cm.python, [join(cm.dir, 'bin/cloudmonkey'), '-c', join(home, 'config'), ...args], { env: { HOME: home, PYTHONPATH: cm.dir }, cwd: home });
}

/** Polls until `fn` answers truthy. */
export async function until<T>(fn: () => Promise<T | undefined | null | false>, timeoutMs = 60_000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}
