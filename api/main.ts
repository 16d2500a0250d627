/** `npm run api`: the HTTP API alone, against DATABASE_URL and TEMPORAL_ADDRESS (or the embedded defaults). */
import { bootstrap, startupFailed } from '../app/process.js';
import { startStack, type Stack } from '../app/stack.js';
import { createApp } from './app.js';
import { listen } from './server.js';
import { apiLimitsFrom } from '../config/env.js';

const { env, logger, onShutdown, isStopping } = bootstrap('volsnap-api');
let stack: Stack | undefined;
try {
  stack = await startStack(env, logger, ['api']);
  const started = stack;
  let http: Awaited<ReturnType<typeof listen>> | undefined;
  // The API answers 503 from the signal on; it closes before the stack (database, embedded servers).
  onShutdown(async () => {
    await http?.close();
    await started.close();
  });
  http = await listen(createApp(stack, { isStopping }), env.HOST, env.PORT, logger, { bodyTimeoutMs: apiLimitsFrom(env).bodyTimeoutMs });
} catch (err) {
  if (!isStopping()) await stack?.close();
  startupFailed(logger, err);
}
