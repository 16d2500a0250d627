import { Hono, type Context } from 'hono';
import type { Logger } from 'pino';
import type { Pool } from '../../db/pool.js';
import type { Caller } from '../../services/caller.js';
import type { Services } from '../../services/index.js';
import type { AppBindings } from '../types.js';
import { COMMANDS_BY_NAME, type CommandContext } from './commands.js';
import { ApiErrorCode, CloudStackError, CsErrorCode, toCloudStackError, unauthorized, unknownCommand } from '../../services/cloudstack/errors.js';
import { createJobRunner, type JobRunner, type JobRunnerOptions, type Redriver } from '../../services/cloudstack/jobs.js';
import { findByApiKey } from '../../services/cloudstack/keys.js';
import { commandParams, lowerCaseParams, parseParams } from './params.js';
import { parseExpires, verifySignature } from './signature.js';
import type { Settings } from '../../config/settings.js';

/** How long the router's read of the settings holds. */
const SETTINGS_TTL_MS = 2_000;
/** With cloudstack.signature.v3.required, how far ahead a request's expires may be (cs signs 10 minutes ahead). */
const MAX_EXPIRES_AHEAD_MS = 3_600_000;
import { loadLookups, type Lookups } from './views.js';

/** The path CloudStack's clients call. */
export const CLOUDSTACK_API_PATH = '/client/api';

export interface CloudStackApiDeps {
  services: Services;
  pool: Pool;
  logger: Logger;
  /** Job runner timings (tests shorten them). */
  jobs?: Pick<JobRunnerOptions, 'heartbeatMs' | 'staleSeconds' | 'sweepMs' | 'owner'>;
  /** The per-key request limiter of the REST API (api/middleware/limits.ts): 0 to go, else seconds to wait. */
  rateLimiter?: { take(id: string): number };
}

/**
 * CloudStack's API dialect over the same services as the REST API: `GET`/`POST` on /client/api, signed with an
 * account's CloudStack key pair, answered in CloudStack's JSON envelopes, async commands as durable jobs.
 */
export function createCloudStackApi(deps: CloudStackApiDeps): { router: Hono<AppBindings>; jobs: JobRunner } {
  const { services, pool } = deps;
  const logger = deps.logger.child({ component: 'cloudstack-api' });

  const contextFor = (caller: Caller, log: Logger, jobs: JobRunner): CommandContext => {
    let lookups: Promise<Lookups> | undefined;
    return { services, pool, caller, log, jobs, lookups: () => (lookups ??= loadLookups(services)) };
  };

  const redriver: Redriver = (job, caller) => {
    const spec = COMMANDS_BY_NAME.get(job.command.toLowerCase());
    if (!spec?.async?.redrivable) return undefined;
    const p = parseParams(spec.name, spec.params, new Map(Object.entries(job.params)));
    const ctx = contextFor(caller, logger.child({ jobId: job.id }), jobs);
    return (jobCtx) => spec.async!.run(ctx, p, jobCtx);
  };

  const jobs = createJobRunner({
    pool,
    logger,
    redriver,
    roleOf: async (accountId) => (await services.accounts.list()).find((a) => a.id === accountId)?.role,
    ...deps.jobs,
  });

  const router = new Hono<AppBindings>();
  router.on(['GET', 'POST'], CLOUDSTACK_API_PATH, async (c) => {
    const params = await requestParams(c);
    const command = [...params].find(([k]) => k.toLowerCase() === 'command')?.[1] ?? '';
    const envelope = `${command ? command.toLowerCase() : 'error'}response`;
    let accountId: string | undefined;
    try {
      const caller = await authenticate(params);
      accountId = caller.accountId;
      // As CloudStack's api.throttling: API_LIMIT_EXCEED (429) once the account's pair is over its rate.
      const wait = deps.rateLimiter?.take(`cloudstack:${caller.accountId}`) ?? 0;
      if (wait > 0) {
        c.header('Retry-After', String(wait));
        throw new CloudStackError(ApiErrorCode.API_LIMIT_EXCEED, CsErrorCode.ServerApiException, `The given user has reached his/her account api limit, please retry after ${wait * 1000} ms.`);
      }
      const spec = COMMANDS_BY_NAME.get(command.toLowerCase());
      if (!spec) throw unknownCommand(command);
      if (spec.admin && caller.role !== 'admin') throw unknownCommand(command, { hint: false });
      const lower = lowerCaseParams(params);
      const p = parseParams(spec.name, spec.params, lower);
      const log = c.var.log.child({ accountId, command: spec.name });
      const ctx = contextFor(caller, log, jobs);
      let body: Record<string, unknown>;
      if (spec.async) {
        const a = spec.async;
        await a.precheck?.(ctx, p);
        const instanceId = a.instanceParam ? ((p[a.instanceParam] as string | undefined) ?? null) : null;
        const { jobId, id } = await jobs.submit(
          {
            caller,
            command: spec.name,
            cmd: a.cmd,
            params: commandParams(lower),
            instanceType: a.instanceType,
            instanceId,
            run: (jobCtx) => a.run(ctx, p, jobCtx),
          },
          Boolean(a.create),
        );
        body = id ? { id, jobid: jobId } : { jobid: jobId };
        log.info({ jobId, instanceId: id ?? instanceId }, 'CloudStack job accepted');
      } else {
        body = await spec.sync!(ctx, p);
      }
      return json(c, { [envelope]: body }, 200);
    } catch (err) {
      const { error, unexpected } = toCloudStackError(err);
      if (unexpected) c.var.log.error({ err, command, accountId }, 'CloudStack API request failed');
      else c.var.log.info({ command, accountId, errorcode: error.errorCode, errortext: error.message }, 'CloudStack API request refused');
      return json(c, { [envelope]: error.toBody() }, error.errorCode);
    }
  });

  // Read at most every few seconds, not once per request: a change applies within SETTINGS_TTL_MS.
  let cached: { at: number; value: Promise<Settings> } | undefined;
  const settings = (): Promise<Settings> => {
    if (!cached || Date.now() - cached.at > SETTINGS_TTL_MS) {
      const value = services.configurations.values();
      cached = { at: Date.now(), value };
      value.catch(() => (cached = undefined));
    }
    return cached.value;
  };

  /** The caller behind apiKey + signature (ApiServer.verifyRequest); 401 for anything that does not check out. */
  async function authenticate(params: Map<string, string>): Promise<Caller> {
    let apiKey: string | undefined;
    let signature: string | undefined;
    let version: string | undefined;
    let expires: string | undefined;
    for (const [k, v] of params) {
      const name = k.toLowerCase();
      if (name === 'apikey') apiKey ??= v;
      else if (name === 'signature') signature ??= v;
      else if (name === 'signatureversion') version ??= v;
      else if (name === 'expires') expires ??= v;
    }
    if (!apiKey || !signature) throw unauthorized('unable to verify user credentials: send apiKey and signature');
    const v3Required = (await settings())['cloudstack.signature.v3.required'] === 1;
    if (version !== '3' && v3Required) {
      throw unauthorized('this server accepts only requests signed with signatureVersion=3 and expires (cloudstack.signature.v3.required)');
    }
    if (version === '3') {
      if (!expires) throw unauthorized('Missing Expires parameter -- ignoring request');
      const at = parseExpires(expires);
      if (!at) throw unauthorized(`Incorrect date format for Expires parameter -- ignoring request`);
      if (at.getTime() < Date.now()) throw unauthorized(`Request expired -- ignoring (expires: ${expires})`);
      // An expiry far ahead is as replayable as none: bounded when the server asks for expiring requests.
      if (v3Required && at.getTime() > Date.now() + MAX_EXPIRES_AHEAD_MS) {
        throw unauthorized(`Expires is more than an hour ahead -- ignoring request (expires: ${expires})`);
      }
    }
    const key = apiKey.length <= 200 ? await findByApiKey(pool, apiKey) : undefined;
    if (!key || !verifySignature(key.secretKey, params, signature)) throw unauthorized();
    return { accountId: key.accountId, role: key.role };
  }

  return { router, jobs };
}

/** The request's parameters: query string, then a form body (first value of a name wins, as getParameter). */
async function requestParams(c: Context<AppBindings>): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const add = (search: URLSearchParams) => {
    for (const [k, v] of search) if (!out.has(k)) out.set(k, v);
  };
  add(new URL(c.req.url).searchParams);
  if (c.req.method === 'POST' && (c.req.header('content-type') ?? '').toLowerCase().startsWith('application/x-www-form-urlencoded')) {
    add(new URLSearchParams(await c.req.text()));
  }
  return out;
}

function json(c: Context<AppBindings>, body: unknown, status: number): Response {
  return c.body(JSON.stringify(body), status as 200, { 'Content-Type': 'application/json; charset=UTF-8' });
}

export { CloudStackError };
