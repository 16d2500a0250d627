/** `npm run worker`: the workers alone, against DATABASE_URL and TEMPORAL_ADDRESS (or the embedded defaults). */
import { startMetricsServer } from '../observability/metrics.js';
import { bootstrap, startupFailed } from '../app/process.js';
import { startStack } from '../app/stack.js';

const { env, logger, onShutdown } = bootstrap('volsnap-worker');
try {
  const stack = await startStack(env, logger, ['worker']);
  onShutdown(() => stack.close());
  // The worker has no HTTP API: its backup counters and SDK metrics get their own scrape endpoint.
  if (env.METRICS_PORT !== undefined) {
    const server = await startMetricsServer(stack.pool, { port: env.METRICS_PORT, metrics: stack.metrics });
    logger.info({ port: server.port }, 'metrics on /metrics');
    onShutdown(() => server.close());
  }
} catch (err) {
  startupFailed(logger, err);
}
