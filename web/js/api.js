/** The volsnap HTTP API (docs/design.md §8) with the user's API key as `Authorization: Bearer`. */

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.details = details ?? {};
  }

  /** The message with per-field problems of a 400, e.g. "invalid request body: name: must not be empty". */
  describe() {
    const fields = this.details?.fields;
    if (fields && typeof fields === 'object') {
      const parts = Object.entries(fields).map(([k, v]) => `${k}: ${v}`);
      if (parts.length) return parts.join('; ');
    }
    return this.message;
  }
}

const seg = (id) => encodeURIComponent(id);

const qs = (query) => {
  const p = new URLSearchParams(Object.entries(query ?? {}).filter(([, v]) => v !== undefined && v !== ''));
  const text = p.toString();
  return text ? `?${text}` : '';
};

/**
 * `onAvailability(up)` hears whether the service answered: false on a network failure or a 503 (stopping, or a
 * dependency down), true on any other answer.
 */
export function createApi(key, { onUnauthorized, onAvailability } = {}) {
  async function call(method, path, body, opts = {}) {
    const headers = { Authorization: `Bearer ${key}`, Accept: 'application/json', ...opts.headers };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(path, {
        method,
        headers,
        cache: 'no-store',
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
    } catch (err) {
      if (err?.name === 'AbortError') throw err;
      onAvailability?.(false);
      throw new ApiError(0, 'NETWORK', 'the service cannot be reached', {});
    }
    const text = await res.text();
    let data;
    try {
      data = text ? JSON.parse(text) : undefined;
    } catch {
      data = undefined;
    }
    onAvailability?.(res.status !== 503);
    if (!res.ok) {
      const e = data?.error;
      if (res.status === 401) onUnauthorized?.();
      throw new ApiError(res.status, e?.code ?? `HTTP_${res.status}`, e?.message ?? `HTTP ${res.status} ${res.statusText}`, e?.details);
    }
    if (opts.onHeaders) opts.onHeaders(res.headers);
    return data;
  }

  /**
   * Every item of a paged list matching `query` (the API's filters): follows X-Next-Cursor (as `cursorParam`)
   * page after page, up to `maxPages` pages of 1000.
   */
  async function listAll(path, cursorParam, query, maxPages = 20) {
    const { limit: _limit, [cursorParam]: first, ...filters } = query ?? {};
    const items = [];
    let cursor = first;
    for (let i = 0; i < maxPages; i++) {
      const url = `${path}${qs({ ...filters, limit: 1000, [cursorParam]: cursor })}`;
      let next;
      const page = await call('GET', url, undefined, { onHeaders: (h) => (next = h.get('X-Next-Cursor') ?? undefined) });
      items.push(...page);
      if (!next) break;
      cursor = next;
    }
    return items;
  }

  return {
    key,
    listVms: () => listAll('/api/v1/vms', 'after'),
    getVm: (id) => call('GET', `/api/v1/vms/${seg(id)}`),
    createVm: (body) => call('POST', '/api/v1/vms', body),
    allowedActions: (id) => call('GET', `/api/v1/vms/${seg(id)}/allowed-actions`),
    vmAction: (id, body) => call('POST', `/api/v1/vms/${seg(id)}/actions`, body),
    /** Snapshots of a VM's disks at one instant (default: all attached), each backed up on its own. */
    snapshotVm: (id, body) => call('POST', `/api/v1/vms/${seg(id)}/snapshots`, body),
    /** The last lines of a VM's serial console (admins only). */
    vmConsole: (id, lines = 40) => call('GET', `/api/v1/vms/${seg(id)}/console?lines=${lines}`),
    /** Who is signed in: the account of the key, and the key's id. */
    account: () => call('GET', '/api/v1/accounts/me'),
    /** Every account (admins only). */
    listAccounts: () => call('GET', '/api/v1/accounts'),
    listVolumes: (query) => listAll('/api/v1/volumes', 'after', query),
    listSnapshots: (query) => listAll('/api/v1/snapshots', 'after', query),
    deleteSnapshot: (id) => call('DELETE', `/api/v1/snapshots/${seg(id)}`),
    revertSnapshot: (id) => call('POST', `/api/v1/snapshots/${seg(id)}/revert`),
    createVolumeFromSnapshot: (id, body) => call('POST', `/api/v1/snapshots/${seg(id)}/volumes`, body),
    listEvents: (query) => listAll('/api/v1/events', 'since', query),
    getSnapshot: (id) => call('GET', `/api/v1/snapshots/${seg(id)}`),
    /** Answers at the milestone: created on primary (asyncBackup) or backed up (the default). */
    takeSnapshot: (volumeId, body, idempotencyKey, signal) =>
      call('POST', `/api/v1/volumes/${seg(volumeId)}/snapshots`, body, { headers: { 'Idempotency-Key': idempotencyKey }, signal }),
    isos: () => call('GET', '/api/v1/isos'),
    serviceOfferings: () => call('GET', '/api/v1/service-offerings'),
    hosts: () => call('GET', '/api/v1/hosts'),
  };
}
