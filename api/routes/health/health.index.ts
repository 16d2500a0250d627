import type { Stack } from '../../../app/stack.js';
import { createRouter } from '../../openapi.js';
import * as routes from './health.routes.js';

/** GET /healthz over the stack's health check (needs no API key). */
export function healthRouter(stack: Pick<Stack, 'health'>) {
  return createRouter().openapi(routes.healthz, async (c) => {
    const { ok, checks } = await stack.health();
    return ok ? c.json({ status: 'ok' as const, checks }, 200) : c.json({ status: 'unavailable' as const, checks }, 503);
  });
}
