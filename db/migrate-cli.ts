/** `npm run migrate`: applies pending migrations to DATABASE_URL (the service also migrates at start-up). */
import { loadEnv } from '../config/env.js';
import { createLogger } from '../observability/logger.js';
import { migrate } from './migrate.js';

const env = loadEnv();
const logger = createLogger({ level: env.LOG_LEVEL, name: 'volsnap-migrate' });
if (!env.DATABASE_URL) {
  logger.error('DATABASE_URL is not set: the embedded database migrates itself when `npm start` runs');
  process.exit(2);
}
const applied = await migrate(env.DATABASE_URL, logger);
logger.info({ applied }, applied.length ? 'migrations applied' : 'database is up to date');
