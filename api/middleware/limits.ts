import type { MiddlewareHandler } from 'hono';
import type { ApiLimits } from '../../config/env.js';
import { HttpError } from '../errors.js';
import type { AppBindings } from '../types.js';

/** Defaults of config/env.ts, for apps built without an environment (tests, scripts). */
export const DEFAULT_API_LIMITS: ApiLimits = { bodyTimeoutMs: 30_000, ratePerMinute: 1200, rateBurst: 200, streamsPerAccount: 5 };

/** Seconds a client refused a stream is told to wait: streams last long, so not at once. */
export const STREAM_RETRY_AFTER_SECONDS = 30;

/**
 * Token buckets, one per key: `burst` requests at once, refilled at `perMinute`. `take` answers 0 when the
 * request may go, else the seconds until it may. In memory: each API process counts its own requests.
 */
export function createRateLimiter(perMinute: number, burst: number, now: () => number = Date.now) {
  const buckets = new Map<string, { tokens: number; at: number }>();
  const perMs = perMinute / 60_000;
  function refill(b: { tokens: number; at: number }, t: number) {
    b.tokens = Math.min(burst, b.tokens + (t - b.at) * perMs);
    b.at = t;
  }
  return {
    take(id: string): number {
      if (perMinute <= 0) return 0;
      const t = now();
      if (buckets.size > 10_000) {
        // Forget buckets that are full again: they are the same as no bucket.
        for (const [k, b] of buckets) {
          refill(b, t);
          if (b.tokens >= burst) buckets.delete(k);
        }
      }
      const b = buckets.get(id) ?? { tokens: burst, at: t };
      refill(b, t);
      buckets.set(id, b);
      if (b.tokens >= 1) {
        b.tokens -= 1;
        return 0;
      }
      return Math.max(1, Math.ceil((1 - b.tokens) / perMs / 1000));
    },
  };
}

export type RateLimiter = ReturnType<typeof createRateLimiter>;

/** After authentication: 429 RATE_LIMITED with Retry-After when the caller's key is over its rate. */
export function rateLimit(limits: Pick<ApiLimits, 'ratePerMinute' | 'rateBurst'>, limiter: RateLimiter = createRateLimiter(limits.ratePerMinute, limits.rateBurst)): MiddlewareHandler<AppBindings> {
  return async (c, next) => {
    const { caller } = c.var;
    const wait = limiter.take(caller.keyId ?? caller.accountId);
    if (wait > 0) {
      throw new HttpError(429, 'RATE_LIMITED', `too many requests with this API key (${limits.ratePerMinute} a minute, bursts of ${limits.rateBurst}); retry in ${wait} s`, {
        limitPerMinute: limits.ratePerMinute,
        burst: limits.rateBurst,
        retryAfterSeconds: wait,
      }, wait);
    }
    await next();
  };
}

/** Open event streams per account: `acquire` refuses (429 TOO_MANY_STREAMS) past the cap; `release` once. */
export function createStreamSlots(perAccount: number) {
  const open = new Map<string, number>();
  return {
    acquire(accountId: string): () => void {
      const n = open.get(accountId) ?? 0;
      if (n >= perAccount) {
        throw new HttpError(429, 'TOO_MANY_STREAMS', `this account has ${n} event streams open, the most allowed; close one first`, { limit: perAccount }, STREAM_RETRY_AFTER_SECONDS);
      }
      open.set(accountId, n + 1);
      let released = false;
      return () => {
        if (released) return;
        released = true;
        const left = (open.get(accountId) ?? 1) - 1;
        if (left <= 0) open.delete(accountId);
        else open.set(accountId, left);
      };
    },
    count: (accountId: string) => open.get(accountId) ?? 0,
  };
}

export type StreamSlots = ReturnType<typeof createStreamSlots>;
