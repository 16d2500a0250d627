import { describe, expect, it } from 'vitest';
import { apiLimitsFrom, loadEnv } from '../../config/env.js';
import { createRateLimiter, createStreamSlots, DEFAULT_API_LIMITS } from '../../api/middleware/limits.js';

describe('API limits (docs/security.md)', () => {
  it('defaults: 30 s body timeout, 1200 requests a minute per key in bursts of 200, 5 streams per account', () => {
    expect(apiLimitsFrom(loadEnv({}))).toEqual({ bodyTimeoutMs: 30_000, ratePerMinute: 1200, rateBurst: 200, streamsPerAccount: 5 });
    expect(DEFAULT_API_LIMITS).toEqual(apiLimitsFrom(loadEnv({})));
  });

  it('reads the variables, 0 turning the body timeout and the rate limit off', () => {
    const env = loadEnv({ HTTP_BODY_TIMEOUT_SECONDS: '0', API_RATE_LIMIT_PER_MINUTE: '0', API_RATE_LIMIT_BURST: '7', EVENT_STREAMS_PER_ACCOUNT: '2' });
    expect(apiLimitsFrom(env)).toEqual({ bodyTimeoutMs: 0, ratePerMinute: 0, rateBurst: 7, streamsPerAccount: 2 });
    expect(() => loadEnv({ EVENT_STREAMS_PER_ACCOUNT: '0' })).toThrow(/EVENT_STREAMS_PER_ACCOUNT/);
    expect(() => loadEnv({ HTTP_BODY_TIMEOUT_SECONDS: 'soon' })).toThrow(/HTTP_BODY_TIMEOUT_SECONDS/);
  });

  it('the token bucket allows the burst, then one request per refill, and says how long to wait', () => {
    let now = 0;
    const limiter = createRateLimiter(60, 3, () => now);
    expect([limiter.take('k'), limiter.take('k'), limiter.take('k')]).toEqual([0, 0, 0]);
    expect(limiter.take('k')).toBe(1);
    expect(limiter.take('other')).toBe(0);
    now += 1000;
    expect(limiter.take('k')).toBe(0);
    expect(limiter.take('k')).toBe(1);
    expect(createRateLimiter(0, 1).take('k')).toBe(0);
  });

  it('stream slots are counted per account and released once', () => {
    const slots = createStreamSlots(1);
    const release = slots.acquire('a');
    expect(() => slots.acquire('a')).toThrow(/event streams open/);
    expect(slots.acquire('b')).toBeTypeOf('function');
    release();
    release();
    expect(slots.count('a')).toBe(0);
    slots.acquire('a');
    expect(slots.count('a')).toBe(1);
  });
});
