import { join } from 'node:path';
import { loadEnv, type Env } from '../config/env.js';
import { createLogger, type Logger } from '../observability/logger.js';
import { installTemporalRuntime } from './runtime.js';

/** Shared start-up for every entry point: env, logger, Temporal runtime, signal handling. */
export function bootstrap(name: string): { env: Env; logger: Logger; onShutdown(fn: () => Promise<void>): void } {
  let env: Env;
  try {
    env = loadEnv();
  } catch (err) {
    console.error(String((err as Error).message));
    process.exit(2);
  }
  const logger = createLogger({ level: env.LOG_LEVEL, logFile: join(env.dataDir, 'logs', 'management-server.log'), name });
  installTemporalRuntime(logger);
  process.on('unhandledRejection', (err) => logger.error({ err }, 'unhandled rejection'));
  process.on('uncaughtException', (err) => {
    logger.fatal({ err }, 'uncaught exception');
    process.exit(1);
  });
  const handlers: Array<() => Promise<void>> = [];
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    const force = setTimeout(() => process.exit(1), 30_000);
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
  return { env, logger, onShutdown: (fn) => handlers.push(fn) };
}
