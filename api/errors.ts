import type { Context, ErrorHandler, NotFoundHandler } from 'hono';
import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { ZodError } from 'zod';
import { ImageBusyError } from '../storage/common.js';
import {
  ConflictError,
  IdempotencyKeyMismatchError,
  NotFoundError,
  ServiceUnavailableError,
  SnapshotCreationFailedError,
  ValidationError,
  publicErrorMessage,
  type ErrorCode,
} from '../domain/errors.js';
import { IllegalSnapshotTransitionError } from '../domain/snapshot-states.js';
import type { AppBindings } from './types.js';

/** The one error shape of the API: `{"error": {"code", "message", "details"}}`. */
export interface ErrorBody {
  error: { code: ErrorCode; message: string; details: Record<string, unknown> };
}

export function errorBody(code: ErrorCode, message: string, details: Record<string, unknown> = {}): ErrorBody {
  return { error: { code, message, details } };
}

/** An HTTP-level refusal raised by the API itself (authentication, authorisation). */
export class HttpError extends Error {
  constructor(
    readonly status: ContentfulStatusCode,
    readonly code: ErrorCode,
    message: string,
    readonly details: Record<string, unknown> = {},
    /** Sent as Retry-After (429s). */
    readonly retryAfterSeconds?: number,
  ) {
    super(message);
  }
}

const WHERE: Record<string, string> = { json: 'body', param: 'path', query: 'query', header: 'header', form: 'body', cookie: 'cookie' };

/** Zod issues as `{fields: {path: message}}`; unknown keys are named one by one. */
export function zodFields(error: ZodError, rootName = '(root)'): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const issue of error.issues) {
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) fields[[...issue.path, key].join('.')] = 'unknown field';
      continue;
    }
    const path = issue.path.map(String).join('.') || rootName;
    fields[path] ??= issue.message;
  }
  return fields;
}

/** A 400 body for failed request validation. */
export function validationErrorBody(error: ZodError, target: string): ErrorBody {
  const fields = zodFields(error);
  const where = WHERE[target] ?? target;
  const summary = Object.entries(fields)
    .slice(0, 3)
    .map(([k, v]) => `${k}: ${v}`)
    .join('; ');
  return errorBody('INVALID_INPUT', `invalid request ${where}: ${summary}`, { in: where, fields });
}

/** `defaultHook` of every router: a validation failure answers 400 with per-field details. */
export function validationHook(result: { success: boolean; error?: ZodError; target: string }, c: Context) {
  if (!result.success && result.error) return c.json(validationErrorBody(result.error, result.target), 400);
  return undefined;
}

const HTTP_EXCEPTION_CODES: Record<number, ErrorCode> = {
  400: 'MALFORMED_REQUEST',
  401: 'UNAUTHORIZED',
  404: 'NOT_FOUND',
  408: 'REQUEST_TIMEOUT',
  413: 'PAYLOAD_TOO_LARGE',
  415: 'UNSUPPORTED_MEDIA_TYPE',
};

// PostgreSQL SQLSTATEs that mean the input was unusable (a value the column type refuses).
const PG_BAD_INPUT = new Set(['22P02', '22003', '22001', '22007', '22008']);
// Two transactions collided: the client may simply retry.
const PG_RETRY = new Set(['40001', '40P01']);

// A dependency is down or going away (PostgreSQL restarting, Temporal unreachable): not the caller's fault, and
// worth a retry; never a bare 500 "internal error".
const NET_DOWN = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', '57P01', '57P02', '57P03', '53300']);
const DOWN_MESSAGE = /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|Cannot use a pool after calling end|connection (?:is )?closed|UNAVAILABLE|DEADLINE_EXCEEDED|Failed to connect|ServiceError/i;

/** Whether `err` (or a cause of it) says a dependency is unreachable. */
export function isDependencyDown(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e && typeof e === 'object' && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && (NET_DOWN.has(code) || code.startsWith('08'))) return true;
    const name = (e as { name?: unknown }).name;
    if (name === 'ServiceError' || name === 'ConnectionError' || name === 'TransportError') return true;
    const message = (e as { message?: unknown }).message;
    if (typeof message === 'string' && DOWN_MESSAGE.test(message) && !(e instanceof ZodError)) return true;
  }
  return false;
}

/** Seconds a client is told to wait when a dependency is down. */
export const DEPENDENCY_RETRY_AFTER_SECONDS = 5;

/** Maps a thrown error to status and body; unknown errors are a logged 500 without details. */
export function toErrorResponse(err: unknown): { status: ContentfulStatusCode; body: ErrorBody; unexpected: boolean } {
  const ok = (status: ContentfulStatusCode, body: ErrorBody) => ({ status, body, unexpected: false });
  if (err instanceof HttpError) return ok(err.status, errorBody(err.code, err.message, err.details));
  if (err instanceof HTTPException) {
    const message = err.status === 400 && /JSON/i.test(err.message) ? 'malformed JSON in request body' : err.message || 'request refused';
    const code = err.status === 400 && /JSON/i.test(err.message) ? 'MALFORMED_JSON' : (HTTP_EXCEPTION_CODES[err.status] ?? (err.status < 500 ? 'MALFORMED_REQUEST' : 'INTERNAL'));
    return ok(err.status as ContentfulStatusCode, errorBody(code, message));
  }
  if (err instanceof NotFoundError) return ok(404, errorBody('NOT_FOUND', err.message, { resource: err.resource, id: err.id }));
  if (err instanceof ConflictError) return ok(409, errorBody(err.code, publicErrorMessage(err.message), err.details));
  if (err instanceof SnapshotCreationFailedError) {
    const reason = publicErrorMessage(err.message);
    const message = /primary storage/.test(reason) ? reason : `creating the snapshot on primary storage failed: ${reason}`;
    return ok(409, errorBody(err.code, message, { snapshotId: err.snapshotId }));
  }
  if (err instanceof IdempotencyKeyMismatchError) return ok(422, errorBody(err.code, err.message, { snapshotId: err.snapshotId }));
  if (err instanceof ServiceUnavailableError) return ok(503, errorBody(err.code, err.message, err.details));
  // Another process held the image beyond the bound: nothing changed, the client may retry.
  if (err instanceof ImageBusyError) return ok(409, errorBody('IMAGE_BUSY', publicErrorMessage(err.message)));
  if (err instanceof ValidationError) return ok(400, errorBody(err.code, err.message, { fields: err.fields }));
  if (err instanceof ZodError) return ok(400, validationErrorBody(err, 'json'));
  if (err instanceof IllegalSnapshotTransitionError) return ok(409, errorBody('INVALID_STATE', err.message, { snapshotId: err.snapshotId, state: err.from }));
  const sqlState = (err as { code?: unknown } | null)?.code;
  if (typeof sqlState === 'string' && PG_BAD_INPUT.has(sqlState)) return ok(400, errorBody('INVALID_INPUT', 'a value in the request is out of range or malformed'));
  if (typeof sqlState === 'string' && sqlState === '23505') return ok(409, errorBody('CONFLICT', 'the request conflicts with an existing resource'));
  if (typeof sqlState === 'string' && PG_RETRY.has(sqlState)) return ok(409, errorBody('CONCURRENT_UPDATE', 'a concurrent request changed the same resources; retry'));
  if (isDependencyDown(err)) return { status: 503, body: errorBody('SERVICE_UNAVAILABLE', 'service unavailable, retrying: a dependency of the service is not answering'), unexpected: true };
  return { status: 500, body: errorBody('INTERNAL', 'internal error'), unexpected: true };
}

/** `app.onError`: maps domain errors to HTTP; logs unexpected ones with their cause and the request id. */
export const onError: ErrorHandler<AppBindings> = (err, c) => {
  const { status, body, unexpected } = toErrorResponse(err);
  const log = c.get('log');
  if (unexpected) log?.error({ err, method: c.req.method, path: c.req.path }, 'request failed');
  else log?.debug({ code: body.error.code, status }, 'request refused');
  if (status === 401) c.header('WWW-Authenticate', 'Bearer realm="volsnap"');
  if (err instanceof ServiceUnavailableError) c.header('Retry-After', String(err.retryAfterSeconds));
  else if (err instanceof HttpError && err.retryAfterSeconds !== undefined) c.header('Retry-After', String(err.retryAfterSeconds));
  else if (status === 503) c.header('Retry-After', String(DEPENDENCY_RETRY_AFTER_SECONDS));
  return c.json(body, status);
};

/** `app.notFound`: unknown routes answer in the error shape too. */
export const notFound: NotFoundHandler<AppBindings> = (c) =>
  c.json(errorBody('NOT_FOUND', `no route for ${c.req.method} ${c.req.path}`), 404);

/**
 * `app.notFound` over the registered routes: a known path asked with a method it does not serve is 405 with
 * an Allow header (RFC 9110 §15.5.6), anything else 404.
 */
export function notFoundOrMethodNotAllowed(routes: ReadonlyArray<{ method: string; path: string }>): NotFoundHandler<AppBindings> {
  const byPattern = new Map<string, { re: RegExp; methods: Set<string> }>();
  for (const r of routes) {
    if (r.method === 'ALL' || r.path.includes('*')) continue; // middleware, not endpoints
    const entry = byPattern.get(r.path) ?? { re: pathPattern(r.path), methods: new Set<string>() };
    entry.methods.add(r.method);
    if (r.method === 'GET') entry.methods.add('HEAD');
    byPattern.set(r.path, entry);
  }
  return (c) => {
    const allowed = new Set<string>();
    for (const { re, methods } of byPattern.values()) if (re.test(c.req.path)) for (const m of methods) allowed.add(m);
    if (allowed.size === 0 || allowed.has(c.req.method)) return notFound(c);
    const allow = [...allowed].sort().join(', ');
    c.header('Allow', allow);
    return c.json(errorBody('METHOD_NOT_ALLOWED', `${c.req.method} is not allowed on ${c.req.path}; allowed: ${allow}`, { allow: [...allowed].sort() }), 405);
  };
}

/** `/a/:id/b` → /^\/a\/[^/]+\/b\/?$/ (Hono path parameters match one segment). */
function pathPattern(path: string): RegExp {
  const body = path
    .split('/')
    .map((seg) => (seg.startsWith(':') ? '[^/]+' : seg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')))
    .join('/');
  return new RegExp(`^${body}/?$`);
}
