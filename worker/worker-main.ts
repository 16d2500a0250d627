/** `npm run worker`: the workers alone, against DATABASE_URL and TEMPORAL_ADDRESS (or the embedded defaults). */
import { bootstrap } from './process.js';
import { startStack } from './stack.js';

const { env, logger, onShutdown } = bootstrap('volsnap-worker');
try {
  const stack = await startStack(env, logger, ['worker']);
  onShutdown(() => stack.close());
} catch (err) {
  logger.fatal({ err }, 'start-up failed');
  logger.flush();
  setTimeout(() => process.exit(1), 50);
}
