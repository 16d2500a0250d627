/**
 * A small XenAPI client: JSON-RPC v2.0 on POST /jsonrpc, a lazily opened and reused session (one re-login on
 * SESSION_INVALID), `Async.*` calls tracked through their task, and the host's HTTP handlers (export_raw_vdi /
 * import_raw_vdi) with the same session handling. Credentials and session refs never reach an error or a log line.
 */
import { createReadStream } from 'node:fs';
import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import type { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';

/** Where a XenServer host (pool master) answers, and how to log in. */
export interface XenApiHost {
  /** Base URL, e.g. https://xen-master.example (no user info in it). */
  url: string;
  username: string;
  password: string;
  /** Extra CA certificate(s) (PEM) for a host with a self-signed certificate. */
  ca?: string;
  /** Set false only for a lab host; TLS verification stays on by default. */
  rejectUnauthorized?: boolean;
}

/** The subset of a pino logger the client uses. */
export interface XenApiLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

/** Tuning of the client. */
export interface XenApiClientOptions {
  logger?: XenApiLogger;
  /** Timeout of one JSON-RPC call (ms); default 120 s. */
  rpcTimeoutMs?: number;
  /** An export/import connection idle this long (ms) is dropped; default 5 min. */
  transferIdleTimeoutMs?: number;
  /** Longest wait between two task polls (ms); default 2 s. */
  maxTaskPollMs?: number;
}

/** XenAPI's null reference, e.g. for VDI.copy's optional base_vdi / into_vdi. */
export const NULL_REF = 'OpaqueRef:NULL';

/** A failure XenAPI reported: `code` is the XenAPI error code, `params` its (redacted) parameters. */
export class XenApiError extends Error {
  override name = 'XenApiError';
  constructor(
    message: string,
    readonly method: string,
    readonly code: string,
    readonly params: string[],
  ) {
    super(message);
  }
}

/** An HTTP handler answered 401: the session is no longer valid. */
class HttpUnauthorized extends Error {}

// Their params are a session ref or a user name: drop them whole rather than rely on pattern matching.
const SECRET_PARAM_CODES = new Set(['SESSION_INVALID', 'SESSION_AUTHENTICATION_FAILED', 'SESSION_AUTHORIZATION_FAILED']);
const REDACTED = '<redacted>';

/** JSON-RPC XenAPI client bound to one host and one set of credentials. */
export class XenApiClient {
  /** scheme://host:port of the host, safe to show in messages. */
  readonly origin: string;
  private readonly base: URL;
  private readonly log: XenApiLogger;
  private readonly rpcTimeoutMs: number;
  private readonly idleMs: number;
  private readonly maxPollMs: number;
  private current: string | null = null;
  private loggingIn: Promise<string> | null = null;
  /** Every session ref this client held, plus the password and user name: scrubbed from every message. */
  private readonly secrets = new Set<string>();
  private nextId = 1;
  private closed = false;

  constructor(
    private readonly host: XenApiHost,
    opts: XenApiClientOptions = {},
  ) {
    const url = new URL(host.url);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`XenServer URL must be http(s), got ${url.protocol}`);
    // Credentials belong in the config fields; a URL with user info would end up in messages.
    if (url.username || url.password) throw new Error(`XenServer URL for ${url.host} must not contain credentials`);
    this.base = url;
    this.origin = url.origin;
    this.log = opts.logger ?? { info() {}, warn() {} };
    this.rpcTimeoutMs = opts.rpcTimeoutMs ?? 120_000;
    this.idleMs = opts.transferIdleTimeoutMs ?? 300_000;
    this.maxPollMs = opts.maxTaskPollMs ?? 2_000;
    for (const s of [host.password, host.username]) if (s) this.secrets.add(s);
  }

  /** Calls `method(session, ...args)`; logs in on first use and once more if the session turns out invalid. */
  call<T>(method: string, ...args: unknown[]): Promise<T> {
    return this.withSession((session) => this.rpc<T>(method, [session, ...args]));
  }

  /** Runs `Async.<method>` and waits for its task; returns the task's result (a ref, or '' for void). */
  async callAsync(method: string, args: unknown[], signal?: AbortSignal): Promise<string> {
    const task = await this.call<string>(`Async.${method}`, ...args);
    try {
      return await this.waitTask(task, method, signal);
    } finally {
      await this.destroyTask(task);
    }
  }

  /**
   * GETs a host HTTP handler (e.g. /export_raw_vdi) under a fresh task and hands the body to `sink`. When the session
   * was lost (401, or a broken stream while the session is no longer valid) it logs in again and restarts the
   * transfer once: `sink` must then start over from scratch.
   */
  async download(
    handler: string,
    query: Record<string, string>,
    sink: (body: Readable, contentLength: number | undefined) => Promise<void>,
    opts: { label: string; signal?: AbortSignal },
  ): Promise<void> {
    await this.transfer(opts, async (session, task) => {
      const res = await this.send('GET', this.handlerPath(handler, query, session, task), { signal: opts.signal });
      await this.assertHandlerOk(res, task, opts.label);
      const len = res.headers['content-length'];
      await sink(res, len === undefined ? undefined : Number(len));
    });
  }

  /** PUTs `file` (`size` bytes, sent with Content-Length as xapi requires) to a host HTTP handler; same session rules as download. */
  async upload(
    handler: string,
    query: Record<string, string>,
    file: string,
    size: number,
    opts: {
      label: string;
      signal?: AbortSignal;
      /** A stream the file's bytes pass through on their way (a fresh one for each try of the transfer): a hash, say. */
      through?: () => Transform;
    },
  ): Promise<void> {
    await this.transfer(opts, async (session, task) => {
      const req = this.request('PUT', this.handlerPath(handler, query, session, task), {
        signal: opts.signal,
        headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
      });
      const response = new Promise<IncomingMessage>((resolve, reject) => req.once('response', resolve).once('error', reject));
      const sent = (opts.through ? pipeline(createReadStream(file), opts.through(), req) : pipeline(createReadStream(file), req)).then(
        () => undefined,
        (err: unknown) => err,
      );
      // xapi answers 200 before reading the body and reports the import's outcome through the task.
      const res = await response;
      if (res.statusCode !== 200) req.destroy();
      await this.assertHandlerOk(res, task, opts.label);
      const [sendErr] = await Promise.all([sent, drain(res)]);
      if (sendErr) throw sendErr;
    });
  }

  /** Logs the session out (best effort); the client refuses further calls. */
  async close(): Promise<void> {
    this.closed = true;
    const session = this.current ?? (await this.loggingIn?.catch(() => null)) ?? null;
    this.current = null;
    if (!session) return;
    await this.rpc('session.logout', [session]).catch((err: unknown) => this.log.warn({ host: this.origin, err: this.describe(err) }, 'XenAPI logout failed'));
  }

  /** Replaces the password, user name and any session ref in `text`. */
  redact(text: string): string {
    let out = text;
    for (const s of this.secrets) out = out.split(s).join(REDACTED);
    return out;
  }

  private async withSession<T>(fn: (session: string) => Promise<T>): Promise<T> {
    const session = await this.session();
    try {
      return await fn(session);
    } catch (err) {
      if (!(err instanceof XenApiError && err.code === 'SESSION_INVALID')) throw err;
      this.dropSession(session);
      return fn(await this.session());
    }
  }

  /** One transfer under a task; restarts once after re-login if the session was lost. */
  private async transfer(opts: { label: string; signal?: AbortSignal }, run: (session: string, task: string) => Promise<void>): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      const task = await this.call<string>('task.create', `volsnap: ${opts.label}`, '');
      const session = await this.session();
      try {
        await run(session, task);
        await this.waitTask(task, opts.label, opts.signal);
        return;
      } catch (err) {
        if (attempt > 1 || opts.signal?.aborted || !(await this.sessionLost(err, session))) throw err;
        this.dropSession(session);
        this.log.warn({ host: this.origin, transfer: opts.label }, 'XenAPI session lost during a transfer; logging in again and restarting it');
      } finally {
        await this.destroyTask(task);
      }
    }
  }

  private async sessionLost(err: unknown, session: string): Promise<boolean> {
    if (err instanceof HttpUnauthorized) return true;
    try {
      await this.rpc('session.get_uuid', [session, session]);
      return false;
    } catch (checkErr) {
      return checkErr instanceof XenApiError && checkErr.code === 'SESSION_INVALID';
    }
  }

  private async assertHandlerOk(res: IncomingMessage, task: string, label: string): Promise<void> {
    if (res.statusCode === 200) return;
    res.resume();
    if (res.statusCode === 401) throw new HttpUnauthorized(`${label}: HTTP 401`);
    // The handler marks its task failed with the real reason (e.g. HANDLE_INVALID); prefer that to the bare status.
    const status = await this.call<string>('task.get_status', task).catch(() => 'unknown');
    if (status === 'failure') await this.throwTaskFailure(task, label);
    throw new Error(`XenServer ${this.origin} answered HTTP ${res.statusCode} to ${label}`);
  }

  /** Polls the task until it leaves `pending`; returns its result or throws its error. */
  private async waitTask(task: string, label: string, signal?: AbortSignal): Promise<string> {
    let delay = 50;
    for (;;) {
      if (signal?.aborted) {
        await this.call('task.cancel', task).catch(() => undefined);
        signal.throwIfAborted();
      }
      const status = await this.call<string>('task.get_status', task);
      if (status === 'success') return parseTaskResult(await this.call<string>('task.get_result', task));
      if (status === 'failure') await this.throwTaskFailure(task, label);
      if (status === 'cancelled') throw new Error(`XenAPI task ${label} on ${this.origin} was cancelled`);
      await sleep(delay, undefined, { signal }).catch(() => undefined);
      delay = Math.min(delay * 2, this.maxPollMs);
    }
  }

  private async throwTaskFailure(task: string, label: string): Promise<never> {
    const info = await this.call<string[]>('task.get_error_info', task);
    throw this.failure(label, String(info[0] ?? 'UNKNOWN_ERROR'), info.slice(1));
  }

  private async destroyTask(task: string): Promise<void> {
    await this.call('task.destroy', task).catch(() => undefined);
  }

  private async session(): Promise<string> {
    if (this.closed) throw new Error(`XenAPI client for ${this.origin} is closed`);
    if (this.current) return this.current;
    this.loggingIn ??= this.login().finally(() => {
      this.loggingIn = null;
    });
    return this.loggingIn;
  }

  private async login(): Promise<string> {
    const ref = await this.rpc<string>('session.login_with_password', [this.host.username, this.host.password, '1.0', 'volsnap']);
    this.secrets.add(ref);
    this.current = ref;
    this.log.info({ host: this.origin }, 'XenAPI session opened');
    return ref;
  }

  private dropSession(session: string): void {
    if (this.current === session) this.current = null;
  }

  private async rpc<T>(method: string, params: unknown[]): Promise<T> {
    const body = JSON.stringify({ jsonrpc: '2.0', method, params, id: this.nextId++ });
    let res: IncomingMessage;
    let text: string;
    try {
      res = await this.send('POST', '/jsonrpc', {
        body,
        headers: { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) },
        signal: AbortSignal.timeout(this.rpcTimeoutMs),
      });
      text = await readText(res);
    } catch (err) {
      throw new Error(`XenAPI ${method} on ${this.origin} failed: ${this.describe(err)}`);
    }
    if (res.statusCode !== 200) throw new Error(`XenAPI ${method} on ${this.origin} failed: HTTP ${res.statusCode}`);
    let reply: { result?: unknown; error?: unknown };
    try {
      reply = JSON.parse(text) as typeof reply;
    } catch {
      throw new Error(`XenAPI ${method} on ${this.origin} failed: the answer is not JSON`);
    }
    if (reply.error !== undefined && reply.error !== null) {
      // v2.0: {code, message: <error code>, data: [params]}; v1.0 (still spoken by some hosts): [code, ...params].
      const e = reply.error as { message?: unknown; data?: unknown } | unknown[];
      const [code, params] = Array.isArray(e) ? [e[0], e.slice(1)] : [e.message, Array.isArray(e.data) ? e.data : []];
      throw this.failure(method, String(code ?? 'UNKNOWN_ERROR'), params as unknown[]);
    }
    return reply.result as T;
  }

  private failure(method: string, code: string, params: unknown[]): XenApiError {
    const safe = SECRET_PARAM_CODES.has(code) ? params.map(() => REDACTED) : params.map((p) => this.redact(String(p)));
    const detail = safe.length > 0 ? ` [${safe.join(', ')}]` : '';
    return new XenApiError(`XenAPI ${method} on ${this.origin} failed: ${code}${detail}`, method, code, safe);
  }

  private describe(err: unknown): string {
    return this.redact(err instanceof Error ? err.message : String(err));
  }

  /** Path and query of a handler request; the session id rides in the query, so this string never goes into a message. */
  private handlerPath(handler: string, query: Record<string, string>, session: string, task: string): string {
    const q = new URLSearchParams({ session_id: session, task_id: task, ...query });
    return `${handler}?${q.toString()}`;
  }

  private request(method: string, pathAndQuery: string, opts: { headers?: Record<string, string>; signal?: AbortSignal }): http.ClientRequest {
    const mod = this.base.protocol === 'https:' ? https : http;
    const req = mod.request({
      protocol: this.base.protocol,
      hostname: this.base.hostname,
      port: this.base.port || undefined,
      path: pathAndQuery,
      method,
      headers: opts.headers,
      signal: opts.signal,
      timeout: this.idleMs,
      ...(this.base.protocol === 'https:' ? { ca: this.host.ca, rejectUnauthorized: this.host.rejectUnauthorized ?? true } : {}),
    });
    req.once('timeout', () => req.destroy(new Error(`no data from ${this.origin} for ${this.idleMs} ms`)));
    return req;
  }

  private send(method: string, pathAndQuery: string, opts: { body?: string; headers?: Record<string, string>; signal?: AbortSignal }): Promise<IncomingMessage> {
    return new Promise((resolve, reject) => {
      const req = this.request(method, pathAndQuery, opts);
      req.once('response', resolve).once('error', reject);
      req.end(opts.body);
    });
  }
}

/** Task results are XML-RPC-encoded even over JSON-RPC: `<value>OpaqueRef:…</value>`. */
export function parseTaskResult(result: string): string {
  const m = /^\s*<value>(?:<string>)?([\s\S]*?)(?:<\/string>)?<\/value>\s*$/.exec(result ?? '');
  const raw = m ? m[1]! : (result ?? '');
  return raw.replaceAll('&lt;', '<').replaceAll('&gt;', '>').replaceAll('&quot;', '"').replaceAll('&apos;', "'").replaceAll('&amp;', '&');
}

async function readText(res: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

async function drain(res: IncomingMessage): Promise<void> {
  for await (const _ of res) {
    // the import handler's body carries nothing; read it to see the connection end
  }
}
