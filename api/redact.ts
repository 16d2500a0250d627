import { publicErrorMessage } from '../domain/errors.js';
import type { Caller } from '../services/caller.js';

/**
 * Host paths are for admins. Ordinary users never see where images live on the servers: fields that hold a
 * path are left out of every answer (volumes' `path`, store references' `installPath`, paths in event details),
 * and a path inside a message is shortened to its last segment. Admins see everything.
 */
const PATH_KEYS = new Set(['path', 'installPath', 'fromPath', 'toPath', 'poolPath', 'storePath', 'volumePath', 'targetPath']);

/** Fields that hold prose (where a path may hide); names and other user text are left as they are. */
const MESSAGE_KEYS = new Set(['message', 'description', 'lastError', 'reason', 'error', 'cause']);

export function redactForUser(value: unknown, key?: string): unknown {
  if (typeof value === 'string') return key !== undefined && MESSAGE_KEYS.has(key) && value.includes('/') ? publicErrorMessage(value) : value;
  if (Array.isArray(value)) return value.map((v) => redactForUser(v, key));
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) if (!PATH_KEYS.has(k)) out[k] = redactForUser(v, k);
    return out;
  }
  return value;
}

/** The value as `caller` may see it. */
export function forCaller<T>(caller: Caller | undefined, value: T): T {
  return caller?.role === 'admin' ? value : (redactForUser(value) as T);
}
