import type { OpenAPIHono, RouteConfig, RouteHandler } from '@hono/zod-openapi';
import type { Logger } from 'pino';
import type { Caller } from '../services/caller.js';
import type { Services } from '../services/index.js';
import type { CloudStackKeys } from '../services/cloudstack/keys.js';
import type { StreamSlots } from './middleware/limits.js';

/** Per-request context every handler can read. */
export interface AppBindings {
  Variables: {
    requestId: string;
    /** The request's logger (carries the request id). */
    log: Logger;
    services: Services;
    /** An account's CloudStack key pair (api/cloudstack): issue (or renew), show without the secret, revoke. */
    cloudstackKeys: {
      issue(accountId: string): Promise<CloudStackKeys & { createdAt: string }>;
      info(accountId: string): Promise<{ apiKey: string; createdAt: string } | undefined>;
      revoke(accountId: string): Promise<{ apiKey: string; createdAt: string } | undefined>;
    };
    /** Open event streams per account (the per-account cap). */
    streams: StreamSlots;
    /** Set by the auth middleware on /api/v1 routes. */
    caller: Caller;
  };
}

export type AppOpenAPI = OpenAPIHono<AppBindings>;

/** A handler typed by its route definition: validated input in, declared responses out. */
export type AppRouteHandler<R extends RouteConfig> = RouteHandler<R, AppBindings>;
