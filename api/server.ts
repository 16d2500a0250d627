import { serve, type ServerType } from '@hono/node-server';
import type { Server } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Hono } from 'hono';
import type { Logger } from 'pino';
import { errorBody } from './errors.js';

/** After close(), requests still open (event streams, synchronous snapshots waiting) are cut after this. */
const CLOSE_GRACE_MS = 3_000;

/** Default bound on a request's headers and body arriving (HTTP_BODY_TIMEOUT_SECONDS). */
export const DEFAULT_BODY_TIMEOUT_MS = 30_000;

export interface ListenOptions {
  /**
   * How long a request's headers and body may take to arrive (Node's requestTimeout); 0: unbounded. It ends
   * once the request is read: the answer is not timed, so a synchronous snapshot may take its whole backup.
   */
  bodyTimeoutMs?: number;
}

/** A raw HTTP answer in the API's error shape, for refusals made before the request reaches the app. */
function rawErrorResponse(status: number, reason: string, body: object, extra: string[] = []): string {
  const json = JSON.stringify(body);
  return [`HTTP/1.1 ${status} ${reason}`, 'Content-Type: application/json', `Content-Length: ${Buffer.byteLength(json)}`, 'Connection: close', ...extra, '', json].join('\r\n');
}

/**
 * `clientError`: the request could not be read. A body that did not arrive in time is 408 REQUEST_TIMEOUT in the
 * error shape; other malformed requests answer as Node would (431, 400). The connection is closed either way.
 */
function onClientError(logger: Logger, bodyTimeoutMs: number) {
  return (err: NodeJS.ErrnoException, socket: Duplex & { bytesWritten?: number }) => {
    if (socket.writable && !socket.bytesWritten) {
      if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
        logger.info({ remoteAddress: (socket as { remoteAddress?: string }).remoteAddress }, 'request body timed out; connection closed');
        const seconds = Math.round(bodyTimeoutMs / 1000);
        socket.end(rawErrorResponse(408, 'Request Timeout', errorBody('REQUEST_TIMEOUT', `the request was not received within ${seconds} s`, { timeoutSeconds: seconds })));
      } else if (err.code === 'HPE_HEADER_OVERFLOW') {
        socket.end(rawErrorResponse(431, 'Request Header Fields Too Large', errorBody('MALFORMED_REQUEST', 'request headers too large')));
      } else if (err.code !== 'ECONNRESET') {
        socket.end(rawErrorResponse(400, 'Bad Request', errorBody('MALFORMED_REQUEST', 'the request cannot be read')));
      }
    }
    // A client that does not read its answer is not waited for.
    setTimeout(() => socket.destroy(), 1000).unref();
    if (!socket.writable) socket.destroy();
  };
}

/** Serves the app on host:port; resolves once listening, rejects if the port cannot be bound. */
export function listen(
  app: Pick<Hono<any, any, any>, 'fetch'>,
  host: string,
  port: number,
  logger: Logger,
  opts: ListenOptions = {},
): Promise<{ server: ServerType; port: number; close(): Promise<void> }> {
  const bodyTimeoutMs = opts.bodyTimeoutMs ?? DEFAULT_BODY_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const server = serve(
      {
        fetch: app.fetch,
        hostname: host,
        port,
        serverOptions: {
          // Node times the request until it is read (not the answer: synchronous snapshots may wait long).
          requestTimeout: bodyTimeoutMs,
          headersTimeout: bodyTimeoutMs > 0 ? Math.min(bodyTimeoutMs, 60_000) : 60_000,
          // How often Node checks those timers: a tenth of the bound, within [100 ms, 30 s].
          connectionsCheckingInterval: bodyTimeoutMs > 0 ? Math.min(30_000, Math.max(100, Math.round(bodyTimeoutMs / 10))) : 30_000,
        },
      },
      (info) => {
        server.off('error', reject);
        logger.info({ url: `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${info.port}`, bodyTimeoutMs }, 'HTTP API listening');
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
      },
    );
    server.on('clientError', onClientError(logger, bodyTimeoutMs));
    server.once('error', (err) => reject(new Error(`the HTTP API cannot listen on ${host}:${port}: ${err.message}`, { cause: err })));
  });
}
