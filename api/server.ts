import { serve, type ServerType } from '@hono/node-server';
import type { Hono } from 'hono';
import type { Logger } from 'pino';

/** Serves the app on host:port; resolves once listening. */
export function listen(app: Pick<Hono<any, any, any>, 'fetch'>, host: string, port: number, logger: Logger): Promise<{ server: ServerType; port: number; close(): Promise<void> }> {
  return new Promise((resolve) => {
    const server = serve({ fetch: app.fetch, hostname: host, port }, (info) => {
      logger.info({ url: `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${info.port}` }, 'HTTP API listening');
      // Synchronous snapshot requests wait for the whole backup: no server-side request timeout.
      (server as unknown as { requestTimeout: number }).requestTimeout = 0;
      resolve({
        server,
        port: info.port,
        close: () => new Promise<void>((r) => server.close(() => r())),
      });
    });
  });
}
