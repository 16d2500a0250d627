import type { MiddlewareHandler } from 'hono';
import { forCaller } from '../redact.js';
import type { AppBindings } from '../types.js';

/** Every JSON answer of /api/v1 as the caller may see it: no host paths for non-admin accounts (api/redact.ts). */
export const redactHostPaths: MiddlewareHandler<AppBindings> = async (c, next) => {
  await next();
  const caller = c.get('caller');
  if (!caller || caller.role === 'admin') return;
  if (!(c.res.headers.get('content-type') ?? '').startsWith('application/json')) return;
  const text = await c.res.clone().text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return;
  }
  const headers = new Headers(c.res.headers);
  headers.delete('content-length');
  c.res = new Response(JSON.stringify(forCaller(caller, body)), { status: c.res.status, statusText: c.res.statusText, headers });
};
