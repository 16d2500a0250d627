import { readFileSync } from 'node:fs';
import { bodyLimit } from 'hono/body-limit';
import { requestId } from 'hono/request-id';
import { metricsHandler, metricsMiddleware } from '../observability/metrics.js';
import { createServices } from '../services/index.js';
import type { Stack } from '../app/stack.js';
import { cloudStackKeyInfo, createCloudStackApi, issueCloudStackKeys, revokeCloudStackKeys, type CloudStackApiDeps } from './cloudstack/index.js';
import { DOCS_HTML } from './docs.js';
import { errorBody, notFoundOrMethodNotAllowed, onError } from './errors.js';
import { apiLimitsFrom, type ApiLimits } from '../config/env.js';
import { requireApiKey } from './middleware/auth.js';
import { createRateLimiter, createStreamSlots, DEFAULT_API_LIMITS, rateLimit } from './middleware/limits.js';
import { redactHostPaths } from './middleware/redact.js';
import { configureOpenAPI, createRouter } from './openapi.js';
import accounts from './routes/accounts/accounts.index.js';
import catalogs from './routes/catalogs/catalogs.index.js';
import configurations from './routes/configurations/configurations.index.js';
import events from './routes/events/events.index.js';
import { healthRouter } from './routes/health/health.index.js';
import { storageRouter } from './routes/storage/storage.index.js';
import snapshots from './routes/snapshots/snapshots.index.js';
import vms from './routes/vms/vms.index.js';
import volumes from './routes/volumes/volumes.index.js';
import type { AppOpenAPI } from './types.js';
import { mountUi } from './ui.js';

/** The slice of the running stack the HTTP API uses; GC and metrics are mounted when the stack has them. */
export type AppStack = Pick<Stack, 'pool' | 'snapshots' | 'drivers' | 'health' | 'logger'> & Partial<Pick<Stack, 'storageGc' | 'backupScrub' | 'metrics' | 'env' | 'links'>>;

/** Request bodies above this are refused with 413 before they are parsed. */
export const MAX_BODY_BYTES = 1024 * 1024;

const VERSION = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

/** Seconds a client is told to wait (Retry-After) while the process is stopping: a restart takes about this long. */
export const STOPPING_RETRY_AFTER_SECONDS = 10;

export interface AppOptions {
  /** While true (the process is shutting down), every request is answered 503 SERVICE_UNAVAILABLE. */
  isStopping?: () => boolean;
  /** CloudStack job runner timings (tests shorten them). */
  cloudstackJobs?: CloudStackApiDeps['jobs'];
  /** Rate limit and stream cap; default: from the stack's environment, else DEFAULT_API_LIMITS. */
  limits?: Partial<ApiLimits>;
}

/** The HTTP application over a running stack (docs/design.md §8). */
export function createApp(stack: AppStack, opts: AppOptions = {}): AppOpenAPI {
  const services = createServices(stack);
  const app = createRouter();
  const limits: ApiLimits = { ...(stack.env ? apiLimitsFrom(stack.env) : DEFAULT_API_LIMITS), ...opts.limits };
  const limiter = createRateLimiter(limits.ratePerMinute, limits.rateBurst);
  const cloudstack = createCloudStackApi({
    services,
    pool: stack.pool,
    logger: stack.logger,
    rateLimiter: limiter,
    ...(opts.cloudstackJobs ? { jobs: opts.cloudstackJobs } : {}),
  });
  const cloudstackKeys = {
    issue: (accountId: string) => issueCloudStackKeys(stack.pool, accountId),
    info: (accountId: string) => cloudStackKeyInfo(stack.pool, accountId),
    revoke: (accountId: string) => revokeCloudStackKeys(stack.pool, accountId),
  };
  const streams = createStreamSlots(limits.streamsPerAccount);

  if (stack.metrics) app.use(metricsMiddleware(stack.metrics));
  app.use(requestId());
  app.use(async (c, next) => {
    c.set('log', stack.logger.child({ requestId: c.var.requestId }));
    c.set('services', services);
    c.set('cloudstackKeys', cloudstackKeys);
    c.set('streams', streams);
    const started = performance.now();
    await next();
    c.var.log.info({ method: c.req.method, path: c.req.path, status: c.res.status, ms: Math.round(performance.now() - started) }, 'request');
  });
  if (opts.isStopping) {
    const isStopping = opts.isStopping;
    // Draining: new work would be cut short and the stores are about to go; tell clients (and load
    // balancers, through /healthz) to come back rather than fail with 500s.
    app.use(async (c, next) => {
      if (!isStopping()) return next();
      c.header('Retry-After', String(STOPPING_RETRY_AFTER_SECONDS));
      c.header('Connection', 'close');
      return c.json(errorBody('SERVICE_UNAVAILABLE', 'the service is shutting down; retry shortly'), 503);
    });
  }
  app.use(
    bodyLimit({
      maxSize: MAX_BODY_BYTES,
      onError: (c) => c.json(errorBody('PAYLOAD_TOO_LARGE', `request body over ${MAX_BODY_BYTES} bytes`, { maxBytes: MAX_BODY_BYTES }), 413),
    }),
  );
  // `/accounts/me` is a path of its own (GET only): PATCH /accounts/{id} must not take "me" for an id and answer
  // 400 where every other known path answers 405 with Allow.
  app.use('/api/v1/accounts/me', async (c, next) => {
    if (c.req.method === 'GET' || c.req.method === 'HEAD') return next();
    c.header('Allow', 'GET, HEAD');
    return c.json(errorBody('METHOD_NOT_ALLOWED', `${c.req.method} is not allowed on ${c.req.path}; allowed: GET, HEAD`, { allow: ['GET', 'HEAD'] }), 405);
  });
  app.use('/api/v1/*', requireApiKey);
  app.use('/api/v1/*', rateLimit(limits, limiter));
  app.use('/api/v1/*', redactHostPaths);
  app.onError(onError);

  configureOpenAPI(app, VERSION);
  app.get('/docs', (c) => c.html(DOCS_HTML));
  mountUi(app, undefined, stack.links);
  app.route('/', healthRouter(stack));
  if (stack.metrics) app.get('/metrics', metricsHandler(stack.pool, stack.metrics));
  app.route('/', storageRouter(stack.storageGc, stack.backupScrub));
  for (const router of [accounts, configurations, catalogs, vms, volumes, snapshots, events]) app.route('/', router);
  // The CloudStack dialect: its own signature check (not the bearer key) and its own envelopes.
  app.route('/', cloudstack.router);
  app.notFound(notFoundOrMethodNotAllowed(app.routes));
  return app;
}
