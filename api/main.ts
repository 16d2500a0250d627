/** `npm run api`: the HTTP API alone, against DATABASE_URL and TEMPORAL_ADDRESS (or the embedded defaults). */
import { bootstrap } from '../worker/process.js';
import { startStack } from '../worker/stack.js';
import { createApp } from './app.js';
import { listen } from './server.js';

const { env, logger, onShutdown } = bootstrap('volsnap-api');
try {
  const stack = await startStack(env, logger, ['api']);
  onShutdown(() => stack.close());
  const http = await listen(createApp(stack), env.HOST, env.PORT, logger);
  onShutdown(() => http.close());
} catch (err) {
  logger.fatal({ err }, 'start-up failed');
  logger.flush();
  setTimeout(() => process.exit(1), 50);
}
