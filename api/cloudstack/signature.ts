import { createHmac, timingSafeEqual } from 'node:crypto';

/*
 * CloudStack's request signature, as its ApiServer verifies it (ApiServer.verifyRequest): the request's
 * parameters other than `signature`, sorted by name, each `name=value` with the value URL-encoded the way
 * java.net.URLEncoder does (spaces as %20), joined with `&`, the whole string lower-cased, HMAC-SHA1 with the
 * secret key, Base64. Pure: the unit tests drive it directly.
 */

/** java.net.URLEncoder.encode(value, "UTF-8").replaceAll("\\+", "%20"): only A-Z a-z 0-9 . - * _ stay as they are. */
export function javaUrlEncode(value: string): string {
  let out = '';
  for (const byte of Buffer.from(value, 'utf8')) {
    const ch = String.fromCharCode(byte);
    if (/[A-Za-z0-9.\-*_]/.test(ch)) out += ch;
    else if (byte === 0x20) out += '%20';
    else out += `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/**
 * The string CloudStack signs: `signature` left out, names sorted (by UTF-16 code unit, as Collections.sort;
 * `caseInsensitiveOrder` sorts by the lower-cased name, as CloudMonkey 5 signs), lower-cased.
 */
export function canonicalRequest(params: ReadonlyMap<string, string> | Record<string, string>, caseInsensitiveOrder = false): string {
  const entries = params instanceof Map ? [...params.entries()] : Object.entries(params);
  const key = (name: string) => (caseInsensitiveOrder ? name.toLowerCase() : name);
  return entries
    .filter(([name]) => name.toLowerCase() !== 'signature')
    .sort(([a], [b]) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0))
    .map(([name, value]) => `${name}=${javaUrlEncode(value)}`)
    .join('&')
    .toLowerCase();
}

/** Base64(HMAC-SHA1(secretKey, canonical request)). */
export function signRequest(secretKey: string, params: ReadonlyMap<string, string> | Record<string, string>): string {
  return createHmac('sha1', secretKey).update(canonicalRequest(params), 'utf8').digest('base64');
}

/**
 * Whether `signature` signs `params` with `secretKey`, compared in constant time. The parameter names are
 * sorted as ApiServer sorts them; the order CloudMonkey 5 uses (by lower-cased name) is accepted too: it only
 * differs when two names differ in case at the same position, and signs the very same parameters.
 */
export function verifySignature(secretKey: string, params: ReadonlyMap<string, string> | Record<string, string>, signature: string): boolean {
  // A `+` sent unencoded in a query string arrives as a space.
  const given = Buffer.from(signature.replace(/ /g, '+'), 'utf8');
  let ok = false;
  const canonicals = new Set([canonicalRequest(params), canonicalRequest(params, true)]);
  for (const canonical of canonicals) {
    const expected = Buffer.from(createHmac('sha1', secretKey).update(canonical, 'utf8').digest('base64'), 'utf8');
    // Equal lengths for timingSafeEqual; a length mismatch still costs one comparison.
    const padded = Buffer.alloc(expected.length);
    given.copy(padded, 0, 0, Math.min(given.length, expected.length));
    if (timingSafeEqual(expected, padded) && given.length === expected.length) ok = true;
  }
  return ok;
}

/**
 * `expires` as CloudStack parses it (yyyy-MM-dd'T'HH:mm:ssZ, e.g. 2026-01-02T03:04:05+0000; fractions of a
 * second, `Z` and `+01:00` accepted too). Undefined when it is not such a date.
 */
export function parseExpires(value: string): Date | undefined {
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})$/.exec(value.trim());
  if (!m) return undefined;
  const zone = m[8] === 'Z' ? 'Z' : `${m[8]!.slice(0, 3)}:${m[8]!.slice(-2)}`;
  const date = new Date(`${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}${m[7] ?? ''}${zone}`);
  return Number.isNaN(date.getTime()) ? undefined : date;
}
