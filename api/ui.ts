import { readFile, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Context, Hono } from 'hono';
import { ERROR_CODES, ERROR_CODE_NAMES, ERROR_SENTENCES } from '../domain/errors.js';

/**
 * The web page (web/): GET / answers web/index.html, GET /ui/<path> the file web/<path>. Plain files, no build
 * step. Only known file types are served, only from inside web/ (no `..`, no dot files, no symlinks out), with
 * an ETag so browsers revalidate cheaply (`no-cache`: the names carry no content hash, so nothing may go stale).
 */

const WEB_ROOT = fileURLToPath(new URL('../web/', import.meta.url));

const CONTENT_TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json; charset=utf-8',
  '.woff2': 'font/woff2',
};

/** The page talks only to its own origin; no inline script or style, no framing. */
const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  'Content-Security-Policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; " +
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'X-Frame-Options': 'DENY',
};

/** Maps a URL path below /ui/ to a file inside `root`, or undefined when it is not a servable name. */
export function resolveUiPath(root: string, urlPath: string): string | undefined {
  let rel: string;
  try {
    rel = decodeURIComponent(urlPath);
  } catch {
    return undefined;
  }
  if (rel.length === 0 || rel.length > 200 || rel.includes('\0') || rel.includes('\\')) return undefined;
  const segments = rel.split('/');
  if (segments.some((s) => s === '' || s.startsWith('.'))) return undefined;
  if (!Object.hasOwn(CONTENT_TYPES, path.extname(rel).toLowerCase())) return undefined;
  const full = path.resolve(root, ...segments);
  return full.startsWith(root.endsWith(path.sep) ? root : root + path.sep) ? full : undefined;
}

async function sendFile(c: Context, file: string, root: string): Promise<Response> {
  let real: string;
  try {
    real = await realpath(file);
    const realRoot = await realpath(root);
    if (!real.startsWith(realRoot + path.sep)) return c.notFound();
    const info = await stat(real);
    if (!info.isFile()) return c.notFound();
    const etag = `W/"${info.size.toString(16)}-${Math.floor(info.mtimeMs).toString(16)}"`;
    const headers: Record<string, string> = {
      ...SECURITY_HEADERS,
      'Content-Type': CONTENT_TYPES[path.extname(real).toLowerCase()] ?? 'application/octet-stream',
      'Cache-Control': 'no-cache',
      ETag: etag,
      'Last-Modified': info.mtime.toUTCString(),
    };
    const inm = c.req.header('if-none-match');
    if (inm && inm.split(',').some((t) => t.trim() === etag)) return c.body(null, 304, headers);
    const body = await readFile(real);
    return c.body(new Uint8Array(body), 200, headers);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR') return c.notFound();
    throw err;
  }
}

/** Serves the web page at / and its assets at /ui/* (no API key needed: the page asks for one). */
/** The catalogue of error codes with their plain sentences, for the page (domain/errors.ts is the one source). */
const ERROR_CODES_JSON = JSON.stringify(
  Object.fromEntries(ERROR_CODE_NAMES.map((code) => [code, { status: ERROR_CODES[code].status, sentence: ERROR_SENTENCES[code] }])),
);

export function mountUi(
  app: Pick<Hono<any, any, any>, 'get'>,
  root: string = WEB_ROOT,
  links: { temporalUiUrl: string | null; namespace: string } | undefined = undefined,
): void {
  app.get('/', (c) => sendFile(c, path.join(root, 'index.html'), root));
  // Where the Temporal Web UI is (the console links admins' snapshot details to their workflows).
  const config = JSON.stringify({ temporalUiUrl: links?.temporalUiUrl ?? null, namespace: links?.namespace ?? 'default' });
  app.get('/ui/config.json', (c) => c.body(config, 200, { ...SECURITY_HEADERS, 'Content-Type': 'application/json; charset=utf-8', 'Cache-Control': 'no-cache' }));
  app.get('/ui/error-codes.json', (c) =>
    c.body(ERROR_CODES_JSON, 200, { ...SECURITY_HEADERS, 'Content-Type': 'application/json; charset=utf-8', 'Cache-Control': 'no-cache' }),
  );
  app.get('/ui/*', (c) => {
    const file = resolveUiPath(root, c.req.path.slice('/ui/'.length));
    return file ? sendFile(c, file, root) : c.notFound();
  });
}
