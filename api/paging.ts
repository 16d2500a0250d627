import type { Context } from 'hono';

/**
 * Keyset paging of a list answer: `items` was read with `limit + 1`; when that extra item came, the page is
 * cut to `limit` and `X-Next-Cursor` (the last item's cursor) and `Link: <…>; rel="next"` name the next page.
 * The body stays the JSON array it always was.
 */
export function page<T>(c: Context, items: T[], limit: number, param: string, cursorOf: (item: T) => string): T[] {
  if (items.length <= limit) return items;
  const shown = items.slice(0, limit);
  const cursor = cursorOf(shown[shown.length - 1]!);
  const next = new URL(c.req.url);
  next.searchParams.set(param, cursor);
  next.searchParams.set('limit', String(limit));
  c.header('X-Next-Cursor', cursor);
  c.header('Link', `<${next.pathname}${next.search}>; rel="next"`);
  return shown;
}
