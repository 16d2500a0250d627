import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import pino, { type Logger } from 'pino';

export type { Logger } from 'pino';

/** Keys whose values never reach a log line. */
const REDACT = ['apiKey', 'password', 'authorization', 'headers.authorization', '*.apiKey', '*.password', 'DATABASE_URL'];

/**
 * The one structured logger (pino JSON) for API and workers: to stdout and, when `logFile` is given, to
 * `$VOLSNAP_DATA_DIR/logs/management-server.log` as the seed asks.
 */
export function createLogger(opts: { level?: string; logFile?: string; name?: string } = {}): Logger {
  const streams: pino.StreamEntry[] = [{ stream: pino.destination({ dest: 1, sync: false }) }];
  if (opts.logFile) {
    mkdirSync(dirname(opts.logFile), { recursive: true });
    streams.push({ stream: pino.destination({ dest: opts.logFile, mkdir: true, sync: false }) });
  }
  return pino(
    {
      level: opts.level ?? 'info',
      name: opts.name ?? 'volsnap',
      redact: { paths: REDACT, censor: '[redacted]' },
      serializers: { err: pino.stdSerializers.errWithCause },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    pino.multistream(streams),
  );
}

/** A logger that drops everything, for tests that do not look at logs. */
export const silentLogger: Logger = pino({ level: 'silent' });
