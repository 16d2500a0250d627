import { serve, type ServerType } from '@hono/node-server';
import type { Server } from 'node:http';
import type { Hono } from 'hono';
import type { Logger } from 'pino';

/** After close(), requests still open (event streams, synchronous snapshots waiting) are cut after this. */
const CLOSE_GRACE_MS = 3_000;

/** Serves the app on host:port; resolves once listening, rejects if the port cannot be bound. */
export function listen(app: Pick<Hono<any, any, any>, 'fetch'>, host: string, port: number, logger: Logger): Promise<{ server: ServerType; port: number; close(): Promise<void> }> {
  return new Promise((resolve, reject) => {
    const server = serve({ fetch: app.fetch, hostname: host, port }, (info) => {
      server.off('error', reject);
      logger.info({ url: `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${info.port}` }, 'HTTP API listening');
      // Synchronous snapshot requests wait for the whole backup: no server-side request timeout.
      (server as unknown as { requestTimeout: number }).requestTimeout = 0;
      resolve({
        server,
        port: info.port,
        close: () =>
          new Promise<void>((r) => {
            const http = server as Server;
            const cut = setTimeout(() => http.closeAllConnections?.(), CLOSE_GRACE_MS);
            http.close(() => {
              clearTimeout(cut);
              logger.info('HTTP API closed');
              r();
            });
            http.closeIdleConnections?.();
          }),
      });
    });
    server.once('error', (err) => reject(new Error(`the HTTP API cannot listen on ${host}:${port}: ${err.message}`, { cause: err })));
  });
}
