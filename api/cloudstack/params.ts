import { paramError } from '../../services/cloudstack/errors.js';

/** A parameter's type, with CloudStack's names (listApis shows them). */
export type ParamType = 'uuid' | 'string' | 'boolean' | 'integer' | 'long' | 'map' | 'list' | 'date';

export interface ParamSpec {
  name: string;
  type: ParamType;
  required?: boolean;
  description: string;
}

/** Parameters every request carries that are not the command's own. */
const PROTOCOL = new Set(['command', 'response', 'apikey', 'signature', 'signatureversion', 'expires', 'sessionkey', '_']);

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** CloudStack's `default.page.size`: a page's size when a list names none. */
const DEFAULT_PAGE_SIZE = 500;

export type ParamValue = string | boolean | number | string[] | Array<Record<string, string>>;

/** The request's parameters by lower-cased name: CloudStack matches command parameter names case-insensitively. */
export function lowerCaseParams(params: ReadonlyMap<string, string>): Map<string, string> {
  const out = new Map<string, string>();
  for (const [k, v] of params) if (!out.has(k.toLowerCase())) out.set(k.toLowerCase(), v);
  return out;
}

/** The command's own parameters (protocol ones dropped), for storing with a job. */
export function commandParams(params: ReadonlyMap<string, string>): Record<string, string> {
  return Object.fromEntries([...params].filter(([k]) => !PROTOCOL.has(k)));
}

/**
 * Parses the parameters `specs` declares: missing required ones and wrong types are a 431 naming the
 * parameter, as ApiDispatcher does; parameters nobody declared are ignored, as CloudStack ignores them.
 */
export function parseParams(command: string, specs: readonly ParamSpec[], params: ReadonlyMap<string, string>): Record<string, ParamValue | undefined> {
  const out: Record<string, ParamValue | undefined> = {};
  const cmd = command.toLowerCase();
  const invalid = (spec: ParamSpec, value: string, why: string) =>
    paramError(`Unable to execute API command ${cmd} due to invalid value. Invalid parameter ${spec.name} value=${value} due to ${why}`);
  for (const spec of specs) {
    if (spec.type === 'map') {
      const entries = mapParam(spec.name, params);
      if (entries.length) out[spec.name] = entries;
      else if (spec.required) throw paramError(`Unable to execute API command ${cmd} due to missing parameter ${spec.name}`);
      continue;
    }
    const raw = params.get(spec.name);
    if (raw === undefined || raw === '') {
      if (spec.required) throw paramError(`Unable to execute API command ${cmd} due to missing parameter ${spec.name}`);
      continue;
    }
    switch (spec.type) {
      case 'uuid':
        if (!UUID.test(raw)) throw invalid(spec, raw, 'incorrect uuid format, or entity does not exist');
        out[spec.name] = raw.toLowerCase();
        break;
      case 'boolean':
        if (!/^(true|false)$/i.test(raw)) throw invalid(spec, raw, 'incorrect boolean value (true or false)');
        out[spec.name] = raw.toLowerCase() === 'true';
        break;
      case 'integer':
      case 'long': {
        if (!/^-?\d{1,18}$/.test(raw.trim())) throw invalid(spec, raw, `incorrect ${spec.type} value format`);
        const n = Number(raw.trim());
        if (spec.type === 'integer' && (n > 2 ** 31 - 1 || n < -(2 ** 31))) throw invalid(spec, raw, 'integer out of range');
        if (!Number.isSafeInteger(n)) throw invalid(spec, raw, `${spec.type} out of range`);
        out[spec.name] = n;
        break;
      }
      case 'list':
        out[spec.name] = raw.split(',').map((s) => s.trim()).filter(Boolean);
        break;
      case 'date':
        if (Number.isNaN(parseCsDate(raw))) throw invalid(spec, raw, 'incorrect date format (yyyy-MM-dd or yyyy-MM-dd HH:mm:ss)');
        out[spec.name] = raw;
        break;
      default:
        if (raw.length > 4096) throw invalid(spec, `${raw.slice(0, 32)}...`, 'a value over 4096 characters');
        out[spec.name] = raw;
    }
  }
  return out;
}

/** `tags[0].key=a&tags[0].value=b` → [{key: 'a', value: 'b'}] (names lower-cased). */
function mapParam(name: string, params: ReadonlyMap<string, string>): Array<Record<string, string>> {
  const re = new RegExp(`^${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\[(\\d+)\\]\\.(\\w+)$`, 'i');
  const byIndex = new Map<number, Record<string, string>>();
  for (const [k, v] of params) {
    const m = re.exec(k);
    if (!m) continue;
    const i = Number(m[1]);
    const entry = byIndex.get(i) ?? {};
    entry[m[2]!.toLowerCase()] = v;
    byIndex.set(i, entry);
  }
  return [...byIndex.entries()].sort(([a], [b]) => a - b).map(([, e]) => e);
}

/** CloudStack's date parameters: yyyy-MM-dd or yyyy-MM-dd HH:mm:ss (UTC here), or an ISO timestamp. */
export function parseCsDate(value: string): number {
  const v = value.trim();
  if (/^\d{4}-\d{2}-\d{2}$/.test(v)) return Date.parse(`${v}T00:00:00Z`);
  if (/^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$/.test(v)) return Date.parse(`${v.replace(' ', 'T')}Z`);
  if (/^\d{4}-\d{2}-\d{2}T/.test(v)) return Date.parse(v.replace(/([+-]\d{2})(\d{2})$/, '$1:$2'));
  return Number.NaN;
}

/** The rows `page` and `pagesize` name: CloudStack's default page size without one, the first page without one. */
export function pageWindow(page?: number, pageSize?: number): { limit: number; offset: number } {
  const limit = pageSize !== undefined && pageSize > 0 ? pageSize : DEFAULT_PAGE_SIZE;
  return { limit, offset: ((page !== undefined && page > 0 ? page : 1) - 1) * limit };
}

/** One page of `items` as CloudStack lists answer: `{count, <key>: [...]}`, `{}` when empty. */
export function listResponse<T>(key: string, items: T[], page?: number, pageSize?: number): Record<string, unknown> {
  if (items.length === 0) return {};
  let shown = items;
  if (page !== undefined || (pageSize !== undefined && pageSize > 0)) {
    const { limit, offset } = pageWindow(page, pageSize);
    shown = items.slice(offset, offset + limit);
  }
  return shown.length ? { count: items.length, [key]: shown } : { count: items.length };
}
