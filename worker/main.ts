/** `npm start`: the whole service with embedded defaults — PostgreSQL, Temporal dev server, workers and API. */
import { createApp } from '../api/app.js';
import { listen } from '../api/server.js';
import { bootstrap } from './process.js';
import { startStack } from './stack.js';

const { env, logger, onShutdown } = bootstrap('volsnap');
try {
  const stack = await startStack(env, logger, ['api', 'worker']);
  onShutdown(() => stack.close());
  const http = await listen(createApp(stack), env.HOST, env.PORT, logger);
  onShutdown(() => http.close());
  if (stack.devServer?.uiUrl) logger.info({ url: stack.devServer.uiUrl }, 'Temporal Web UI');
} catch (err) {
  logger.fatal({ err }, 'start-up failed');
  logger.flush();
  setTimeout(() => process.exit(1), 50);
}
