import { Hono } from 'hono';
import type { Stack } from '../worker/stack.js';

/** The HTTP application over a running stack. */
export function createApp(stack: Pick<Stack, 'health' | 'logger'>): Hono {
  const app = new Hono();
  app.get('/healthz', async (c) => {
    const { ok, checks } = await stack.health();
    return c.json({ status: ok ? 'ok' : 'unavailable', checks }, ok ? 200 : 503);
  });
  return app;
}
