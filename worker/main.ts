/** `npm start`: the whole service with embedded defaults — PostgreSQL, Temporal dev server, workers and API. */
import { createApp } from '../api/app.js';
import { listen } from '../api/server.js';
import { apiLimitsFrom } from '../config/env.js';
import { bootstrap, startupFailed } from '../app/process.js';
import { startStack, type Stack } from '../app/stack.js';

const { env, logger, onShutdown, isStopping } = bootstrap('volsnap');
let stack: Stack | undefined;
try {
  stack = await startStack(env, logger, ['api', 'worker']);
  const started = stack;
  let http: Awaited<ReturnType<typeof listen>> | undefined;
  // Workers drain first while the API answers 503, then the API closes, then the stack: the database and the
  // embedded servers go last, so a copy finishing during the drain can still record its result.
  onShutdown(async () => {
    await started.workers?.shutdown();
    await http?.close();
    await started.close();
  });
  http = await listen(createApp(stack, { isStopping }), env.HOST, env.PORT, logger, { bodyTimeoutMs: apiLimitsFrom(env).bodyTimeoutMs });
  if (stack.devServer?.uiUrl) logger.info({ url: stack.devServer.uiUrl }, 'Temporal Web UI');
} catch (err) {
  if (!isStopping()) await stack?.close();
  startupFailed(logger, err);
}
