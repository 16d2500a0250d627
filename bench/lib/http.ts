/**
 * A small JSON client over real HTTP (Node's fetch). Node's fetch (undici) keeps connections alive by default;
 * the server side counts accepted TCP connections so the results can show the reuse.
 */
export interface HttpResult<T = any> {
  status: number;
  body: T;
  ms: number;
  /** performance.now() when the request was sent. */
  start: number;
  headers: Headers;
}

export class HttpClient {
  constructor(
    readonly baseUrl: string,
    private readonly key: string,
  ) {}

  as(key: string): HttpClient {
    return new HttpClient(this.baseUrl, key);
  }

  async call<T = any>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<HttpResult<T>> {
    const init: RequestInit = {
      method,
      headers: { authorization: `Bearer ${this.key}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    };
    const t = performance.now();
    const res = await fetch(`${this.baseUrl}${path}`, init);
    const text = await res.text();
    const ms = performance.now() - t;
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      // not JSON
    }
    return { status: res.status, body: parsed as T, ms, start: t, headers: res.headers };
  }

  /** A plain fetch with this client's key (for streams: the caller reads the body). */
  raw(path: string, init: RequestInit = {}): Promise<Response> {
    return fetch(`${this.baseUrl}${path}`, { ...init, headers: { authorization: `Bearer ${this.key}`, ...((init.headers as Record<string, string>) ?? {}) } });
  }

  /** Like call, but throws unless the status is one of `ok`. */
  async expect<T = any>(ok: number[], method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<HttpResult<T>> {
    const r = await this.call<T>(method, path, body, headers);
    if (!ok.includes(r.status)) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
    return r;
  }
}
