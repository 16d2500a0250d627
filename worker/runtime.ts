import { DefaultLogger, Runtime, type LogEntry } from '@temporalio/worker';
import type { Logger } from 'pino';

let installed = false;

const LEVELS = { TRACE: 'trace', DEBUG: 'debug', INFO: 'info', WARN: 'warn', ERROR: 'error' } as const;

/**
 * Routes the Temporal SDK's runtime and workflow logs through our pino logger (once per process), and exposes
 * the SDK's metrics in Prometheus format on `metricsBind` when given.
 */
export function installTemporalRuntime(logger: Logger, metricsBind?: string): void {
  if (installed) return;
  installed = true;
  const sdkLog = logger.child({ component: 'temporal-sdk' });
  Runtime.install({
    logger: new DefaultLogger('INFO', (entry: LogEntry) => {
      const { message, meta } = entry;
      sdkLog[LEVELS[entry.level]]({ ...meta }, message);
    }),
    ...(metricsBind ? { telemetryOptions: { metrics: { prometheus: { bindAddress: metricsBind } } } } : {}),
  });
}
