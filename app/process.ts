import { join } from 'node:path';
import { FORCE_EXIT_MARGIN_SECONDS, loadEnv, type Env } from '../config/env.js';
import { asError, createLogger, type Logger } from '../observability/logger.js';
import { installTemporalRuntime } from './runtime.js';

/** Logs why start-up failed (message, stack, cause chain) and exits 1. */
export function startupFailed(logger: Logger, err: unknown): void {
  logger.fatal({ err: asError(err) }, 'start-up failed');
  logger.flush();
  setTimeout(() => process.exit(1), 50);
}

export interface Lifecycle {
  env: Env;
  logger: Logger;
  /** Shutdown steps, run in reverse order of registration. */
  onShutdown(fn: () => Promise<void>): void;
  /** True from the first SIGTERM/SIGINT on: the API answers 503 meanwhile (api/app.ts). */
  isStopping(): boolean;
}

/** Shared start-up for every entry point: env, logger, Temporal runtime, signal handling. */
export function bootstrap(name: string): Lifecycle {
  let env: Env;
  try {
    env = loadEnv();
  } catch (err) {
    console.error(String((err as Error).message));
    process.exit(2);
  }
  const logger = createLogger({ level: env.LOG_LEVEL, logFile: join(env.dataDir, 'logs', 'management-server.log'), name });
  installTemporalRuntime(logger);
  process.on('unhandledRejection', (err) => logger.error({ err: asError(err) }, 'unhandled rejection'));
  process.on('uncaughtException', (err) => {
    logger.fatal({ err: asError(err) }, 'uncaught exception');
    process.exit(1);
  });
  const handlers: Array<() => Promise<void>> = [];
  let stopping = false;
  const stop = (signal: string) => {
    // A second signal changes nothing: under `npm start` a Ctrl-C arrives twice (from the terminal and from npm).
    if (stopping) return;
    stopping = true;
    const forceAfterSeconds = env.WORKER_SHUTDOWN_GRACE_SECONDS + FORCE_EXIT_MARGIN_SECONDS;
    logger.info({ signal, graceSeconds: env.WORKER_SHUTDOWN_GRACE_SECONDS, forceAfterSeconds }, 'shutting down');
    const force = setTimeout(() => {
      logger.fatal({ forceAfterSeconds }, 'shutdown did not finish in time; exiting by force');
      logger.flush();
      setTimeout(() => process.exit(1), 50);
    }, forceAfterSeconds * 1000);
    force.unref();
    (async () => {
      for (const h of handlers.reverse()) await h().catch((err) => logger.error({ err }, 'shutdown failed'));
      logger.info('stopped');
      logger.flush();
      setTimeout(() => process.exit(0), 50);
    })();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // `npm start` does not pass a SIGTERM sent to npm on to us: when our parent dies and we are re-parented,
  // shut down the same way rather than linger with PostgreSQL and Temporal running.
  const parent = process.ppid;
  if (parent !== 1) {
    setInterval(() => {
      if (process.ppid !== parent) stop('parent exited');
    }, 1000).unref();
  }
  return { env, logger, onShutdown: (fn) => handlers.push(fn), isStopping: () => stopping };
}
