import { AsyncLocalStorage } from 'node:async_hooks';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { inspect } from 'node:util';
import pino, { type Logger } from 'pino';

export type { Logger } from 'pino';

/**
 * A thrown or rejected value as an Error, so that its log line has a message and a stack even when it was not
 * one (a library's bare `reject()` would otherwise log an empty line).
 */
export function asError(value: unknown): Error {
  if (value instanceof Error) return value;
  return new Error(`failed with a non-Error value: ${inspect(value, { depth: 3, breakLength: Infinity })}`, { cause: value });
}

/** Keys whose values never reach a log line. */
const REDACT = ['apiKey', 'password', 'authorization', 'headers.authorization', '*.apiKey', '*.password', 'DATABASE_URL'];

/** Fields (snapshotId, volumeId, workflowId, attempt, ...) every log line written inside `withLogContext` carries. */
const logContext = new AsyncLocalStorage<Record<string, unknown>>();

/**
 * Runs `fn` with `fields` added to every log line written meanwhile, by any logger made by `createLogger` (the
 * storage driver's lines during a backup, say), unless the line or its child logger already has that key.
 */
export function withLogContext<T>(fields: Record<string, unknown>, fn: () => T): T {
  return logContext.run({ ...logContext.getStore(), ...fields }, fn);
}

/** Adds the current log context's fields that the line does not carry already (no duplicate JSON keys). */
function contextMixin(mergeObject: object, _level: number, logger: Logger): object {
  const ctx = logContext.getStore();
  if (!ctx) return {};
  const bound = logger.bindings();
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(ctx)) {
    if (v !== undefined && !(k in bound) && !(k in mergeObject)) out[k] = v;
  }
  return out;
}

/**
 * The one structured logger (pino JSON) for API and workers: to stdout (unless `stdout: false`) and, when
 * `logFile` is given, to `$VOLSNAP_DATA_DIR/logs/management-server.log` as the seed asks. Errors under `err`
 * are serialized with their cause chain. Writes are asynchronous; `flushLogger` (or `logger.flush`) drains
 * them, and pino drains them synchronously on process exit.
 */
export function createLogger(opts: { level?: string; logFile?: string; name?: string; stdout?: boolean } = {}): Logger {
  // Each stream takes every level: the logger's own level filters (a multistream entry defaults to 'info',
  // which would swallow LOG_LEVEL=debug).
  const streams: pino.StreamEntry[] = [];
  if (opts.stdout ?? true) streams.push({ level: 'trace', stream: pino.destination({ dest: 1, sync: false }) });
  if (opts.logFile) {
    mkdirSync(dirname(opts.logFile), { recursive: true });
    streams.push({ level: 'trace', stream: pino.destination({ dest: opts.logFile, mkdir: true, sync: false }) });
  }
  const multi = pino.multistream(streams);
  // pino's multistream has no `flush`, so `logger.flush()` would do nothing: flush every destination.
  Object.assign(multi, {
    flush(cb: (err?: Error) => void) {
      Promise.all(streams.map((s) => flushStream(s.stream))).then(() => cb(), cb);
    },
  });
  return pino(
    {
      level: opts.level ?? 'info',
      name: opts.name ?? 'volsnap',
      redact: { paths: REDACT, censor: '[redacted]' },
      serializers: { err: pino.stdSerializers.errWithCause },
      timestamp: pino.stdTimeFunctions.isoTime,
      mixin: contextMixin,
    },
    multi,
  );
}

async function flushStream(stream: unknown): Promise<void> {
  const s = stream as { flushSync?: () => void; _writing?: boolean };
  // Let an asynchronous write already in flight finish first (keeps lines in order), briefly.
  for (let i = 0; i < 100 && s._writing; i++) await new Promise((r) => setTimeout(r, 10));
  try {
    // Writes what is still buffered; a destination not open yet or already closed throws (nothing to drain).
    s.flushSync?.();
  } catch {
    // nothing to drain
  }
}

/** Resolves when everything logged so far has been handed to the OS (stdout and the log file). */
export function flushLogger(logger: Logger): Promise<void> {
  return new Promise((resolve) => {
    try {
      logger.flush(() => resolve());
    } catch {
      resolve();
    }
  });
}

/** A logger that drops everything, for tests that do not look at logs. */
export const silentLogger: Logger = pino({ level: 'silent' });
