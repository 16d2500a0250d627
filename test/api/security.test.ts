import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApp } from '../../api/app.js';
import { signRequest } from '../../api/cloudstack/signature.js';
import { listen } from '../../api/server.js';
import { silentLogger } from '../../observability/logger.js';
import { ensureAdminAccount } from '../../services/accounts.js';
import { ADMIN_KEY, MiB, startApiHarness, waitFor, type ApiHarness } from './harness.js';

/** Issue 17: API keys and accounts, idempotency, resource bounds. */
describe('API security', () => {
  let h: ApiHarness;

  beforeAll(async () => {
    h = await startApiHarness();
  });
  afterAll(async () => {
    await h?.stop();
  });

  it('the OpenAPI document declares the new routes, 422 and 429 answers, and the paging headers', async () => {
    const doc = (await h.call('GET', '/openapi.json', { key: null })).body;
    for (const path of ['/api/v1/accounts/me', '/api/v1/accounts/{accountId}/keys', '/api/v1/accounts/{accountId}/keys/{keyId}', '/api/v1/accounts/{id}', '/api/v1/accounts/{accountId}/cloudstack-keys']) {
      expect(Object.keys(doc.paths)).toContain(path);
    }
    expect(Object.keys(doc.paths['/api/v1/volumes/{id}/snapshots'].post.responses)).toEqual(expect.arrayContaining(['422', '429']));
    expect(Object.keys(doc.paths['/api/v1/events/stream'].get.responses)).toContain('429');
    expect(Object.keys(doc.paths['/api/v1/snapshots'].get.responses['200'].headers)).toEqual(['X-Next-Cursor', 'Link']);
    expect(Object.keys(doc.paths['/healthz'].get.responses)).not.toContain('429');
    const codes = doc.components.schemas.Error.properties.error.properties.code.enum;
    expect(codes).toEqual(expect.arrayContaining(['IDEMPOTENCY_KEY_MISMATCH', 'RATE_LIMITED', 'TOO_MANY_STREAMS', 'REQUEST_TIMEOUT', 'LAST_API_KEY', 'API_KEY_IN_USE']));
  });

  describe('key management', () => {
    it('GET /accounts/me names the caller and the key in use', async () => {
      const alice = await h.createUser('km-alice');
      const me = await h.call('GET', '/api/v1/accounts/me', { key: alice.key });
      expect(me.status).toBe(200);
      expect(me.body).toMatchObject({ id: alice.id, name: 'km-alice', role: 'user', disabled: false });
      expect(me.body.apiKeyId).toMatch(/^[0-9a-f-]{36}$/);
      const admin = await h.call('GET', '/api/v1/accounts/me');
      expect(admin.body).toMatchObject({ name: 'admin', role: 'admin' });
    });

    it('adds a second key, lists keys without secrets, revokes one (401 at once), never the last', async () => {
      const bob = await h.createUser('km-bob');
      const second = await h.call('POST', '/api/v1/accounts/me/keys', { key: bob.key, body: { name: 'ci' } });
      expect(second.status).toBe(201);
      expect(second.body.apiKey).toMatch(/^vs_[A-Za-z0-9_-]{43}$/);
      expect(second.body).toMatchObject({ name: 'ci', accountId: bob.id, revokedAt: null });
      expect((await h.call('GET', '/api/v1/vms', { key: second.body.apiKey })).status).toBe(200);

      const listed = await h.call('GET', '/api/v1/accounts/me/keys', { key: second.body.apiKey });
      expect(listed.status).toBe(200);
      expect(listed.body).toHaveLength(2);
      const text = JSON.stringify(listed.body);
      expect(text).not.toContain(bob.key);
      expect(text).not.toContain(second.body.apiKey);
      expect(listed.body.every((k: { lastUsedAt: string | null }) => k.lastUsedAt !== null)).toBe(true);
      const first = listed.body.find((k: { id: string }) => k.id !== second.body.id);

      // Rotation: the old key is revoked with the new one, and is refused from then on.
      const revoked = await h.call('DELETE', `/api/v1/accounts/me/keys/${first.id}`, { key: second.body.apiKey });
      expect(revoked.status).toBe(200);
      expect(revoked.body.revokedAt).not.toBeNull();
      const refused = await h.call('GET', '/api/v1/vms', { key: bob.key });
      expect(refused.status).toBe(401);
      expect(refused.body.error.code).toBe('UNAUTHORIZED');

      const last = await h.call('DELETE', `/api/v1/accounts/me/keys/${second.body.id}`, { key: second.body.apiKey });
      expect(last.status).toBe(409);
      expect(last.body.error.code).toBe('LAST_API_KEY');
      const third = await h.call('POST', '/api/v1/accounts/me/keys', { key: second.body.apiKey, body: { name: 'third' } });
      const self = await h.call('DELETE', `/api/v1/accounts/me/keys/${second.body.id}`, { key: second.body.apiKey });
      expect(self.status).toBe(409);
      expect(self.body.error.code).toBe('API_KEY_IN_USE');
      expect((await h.call('DELETE', `/api/v1/accounts/me/keys/${third.body.id}`, { key: second.body.apiKey })).status).toBe(200);

      // Another account's keys: 403 for a user, visible to an admin; a key of another account is 404.
      const carol = await h.createUser('km-carol');
      expect((await h.call('GET', `/api/v1/accounts/${bob.id}/keys`, { key: carol.key })).status).toBe(403);
      expect((await h.call('GET', `/api/v1/accounts/${bob.id}/keys`)).body).toHaveLength(3);
      expect((await h.call('DELETE', `/api/v1/accounts/me/keys/${second.body.id}`, { key: carol.key })).status).toBe(404);
    });

    it('an admin disables an account: its bearer keys and CloudStack signatures get 401 at once, until enabled', async () => {
      const created = await h.call('POST', '/api/v1/accounts', { body: { name: 'km-dave', role: 'user' } });
      const dave = { id: created.body.id as string, key: created.body.apiKey as string, cs: created.body.cloudstack as { apiKey: string; secretKey: string } };
      const cloudstack = async () => {
        const params: Record<string, string> = { command: 'listVolumes', response: 'json', apiKey: dave.cs.apiKey };
        const query = new URLSearchParams({ ...params, signature: signRequest(dave.cs.secretKey, params) });
        return (await h.app.request(`/client/api?${query}`)).status;
      };
      expect((await h.call('GET', '/api/v1/vms', { key: dave.key })).status).toBe(200);
      expect(await cloudstack()).toBe(200);

      const user = await h.createUser('km-eve');
      expect((await h.call('PATCH', `/api/v1/accounts/${dave.id}`, { key: user.key, body: { disabled: true } })).status).toBe(403);
      const disabled = await h.call('PATCH', `/api/v1/accounts/${dave.id}`, { body: { disabled: true } });
      expect(disabled.status).toBe(200);
      expect(disabled.body.disabled).toBe(true);
      expect((await h.call('GET', '/api/v1/vms', { key: dave.key })).status).toBe(401);
      expect(await cloudstack()).toBe(401);

      const me = (await h.call('GET', '/api/v1/accounts/me')).body;
      const self = await h.call('PATCH', `/api/v1/accounts/${me.id}`, { body: { disabled: true } });
      expect(self.status).toBe(409);

      expect((await h.call('PATCH', `/api/v1/accounts/${dave.id}`, { body: { disabled: false } })).body.disabled).toBe(false);
      expect((await h.call('GET', '/api/v1/vms', { key: dave.key })).status).toBe(200);
      expect(await cloudstack()).toBe(200);
    });

    it('the CloudStack key pair is shown without its secret, renewed and revoked like the bearer keys', async () => {
      const created = await h.call('POST', '/api/v1/accounts', { body: { name: 'km-frank', role: 'user' } });
      const key = created.body.apiKey as string;
      const signed = async (pair: { apiKey: string; secretKey: string }) => {
        const params: Record<string, string> = { command: 'listVolumes', response: 'json', apiKey: pair.apiKey };
        const query = new URLSearchParams({ ...params, signature: signRequest(pair.secretKey, params) });
        return (await h.app.request(`/client/api?${query}`)).status;
      };
      const first = created.body.cloudstack as { apiKey: string; secretKey: string };
      const shown = await h.call('GET', '/api/v1/accounts/me/cloudstack-keys', { key });
      expect(shown.status).toBe(200);
      expect(shown.body.apiKey).toBe(first.apiKey);
      expect(JSON.stringify(shown.body)).not.toContain(first.secretKey);

      const renewed = await h.call('POST', '/api/v1/accounts/me/cloudstack-keys', { key });
      expect(renewed.status).toBe(201);
      expect(renewed.body.secretKey).toBeTypeOf('string');
      expect(await signed(first)).toBe(401);
      expect(await signed(renewed.body)).toBe(200);

      const other = await h.createUser('km-grace');
      expect((await h.call('DELETE', `/api/v1/accounts/${created.body.id}/cloudstack-keys`, { key: other.key })).status).toBe(403);
      const revoked = await h.call('DELETE', '/api/v1/accounts/me/cloudstack-keys', { key });
      expect(revoked.status).toBe(200);
      expect(await signed(renewed.body)).toBe(401);
      expect((await h.call('GET', '/api/v1/accounts/me/cloudstack-keys', { key })).status).toBe(404);
      // An admin can issue a new pair for the account.
      const again = await h.call('POST', `/api/v1/accounts/${created.body.id}/cloudstack-keys`);
      expect(again.status).toBe(201);
      expect(await signed(again.body)).toBe(200);
    });

    it('ADMIN_API_KEY keeps working and its key is listed', async () => {
      const keys = await h.call('GET', '/api/v1/accounts/me/keys', { key: ADMIN_KEY });
      expect(keys.body.map((k: { name: string }) => k.name)).toContain('ADMIN_API_KEY');
    });
  });

  describe('Idempotency-Key', () => {
    let user: { id: string; key: string };
    let disks: string[];
    const snapshot = (volumeId: string, body: Record<string, unknown>, key?: string) =>
      h.call('POST', `/api/v1/volumes/${volumeId}/snapshots`, { key: user.key, body, ...(key ? { headers: { 'Idempotency-Key': key } } : {}) });

    beforeAll(async () => {
      user = await h.createUser('idem-user');
      const vm = await h.call('POST', '/api/v1/vms', { key: user.key, body: { name: 'idem-vm', hypervisor: 'KVM', rootDiskSizeBytes: MiB, dataDisks: [{ sizeBytes: MiB }, { sizeBytes: MiB }] } });
      expect(vm.status).toBe(201);
      disks = vm.body.volumes.filter((v: { type: string }) => v.type === 'DATADISK').map((v: { id: string }) => v.id);
    });

    it('the same key and body replays the answer; another body with the key is 422 IDEMPOTENCY_KEY_MISMATCH, no new snapshot', async () => {
      const first = await snapshot(disks[0]!, { name: 'idem-a', asyncBackup: true }, 'k-body');
      expect(first.status).toBe(201);
      const again = await snapshot(disks[0]!, { name: 'idem-a', asyncBackup: true }, 'k-body');
      expect(again.status).toBe(200);
      expect(again.body.id).toBe(first.body.id);
      for (const body of [{ name: 'idem-b', asyncBackup: true }, { name: 'idem-a', asyncBackup: false }, { asyncBackup: true }]) {
        const other = await snapshot(disks[0]!, body, 'k-body');
        expect(other.status, JSON.stringify(body)).toBe(422);
        expect(other.body.error.code).toBe('IDEMPOTENCY_KEY_MISMATCH');
        expect(other.body.error.details.snapshotId).toBe(first.body.id);
      }
      const { rows } = await h.stack.pool.query('SELECT count(*)::int AS n FROM snapshots WHERE account_id = $1 AND idempotency_key = $2', [user.id, 'k-body']);
      expect(rows[0].n).toBe(1);
      await waitFor(async () => (await h.call('GET', `/api/v1/snapshots/${first.body.id}`, { key: user.key })).body.state === 'BackedUp', 30_000, 'BackedUp');
    });

    it('a key expires after idempotency.key.ttl, and with its snapshot deleted: then it takes a new snapshot', async () => {
      const first = await snapshot(disks[0]!, { name: 'idem-exp', asyncBackup: true }, 'k-expire');
      expect(first.status).toBe(201);
      const { rows } = await h.stack.pool.query(`SELECT extract(epoch FROM idempotency_expires - created)::int AS ttl FROM snapshots WHERE id = $1`, [first.body.id]);
      expect(rows[0].ttl).toBeGreaterThanOrEqual(86_399);
      // A day later, as far as the key is concerned.
      await h.stack.pool.query(`UPDATE snapshots SET idempotency_expires = now() - interval '1 second' WHERE id = $1`, [first.body.id]);
      const later = await snapshot(disks[0]!, { name: 'idem-exp', asyncBackup: true }, 'k-expire');
      expect(later.status).toBe(201);
      expect(later.body.id).not.toBe(first.body.id);

      // The snapshot the key names is deleted: no Destroyed snapshot replayed.
      await waitFor(async () => (await h.call('GET', `/api/v1/snapshots/${later.body.id}`, { key: user.key })).body.state === 'BackedUp', 30_000, 'BackedUp');
      expect((await h.call('DELETE', `/api/v1/snapshots/${later.body.id}`, { key: user.key })).body.state).toBe('Destroyed');
      const afterDelete = await snapshot(disks[0]!, { name: 'idem-exp', asyncBackup: true }, 'k-expire');
      expect(afterDelete.status).toBe(201);
      expect(afterDelete.body.state).not.toBe('Destroyed');
      expect(afterDelete.body.id).not.toBe(later.body.id);
      await waitFor(async () => (await h.call('GET', `/api/v1/snapshots/${afterDelete.body.id}`, { key: user.key })).body.state === 'BackedUp', 30_000, 'BackedUp');

      // The period is a runtime setting.
      expect((await h.call('PUT', '/api/v1/configurations/idempotency.key.ttl', { body: { value: 120 } })).status).toBe(200);
      const short = await snapshot(disks[1]!, { name: 'idem-ttl', asyncBackup: true }, 'k-ttl');
      const ttl = await h.stack.pool.query(`SELECT extract(epoch FROM idempotency_expires - created)::int AS ttl FROM snapshots WHERE id = $1`, [short.body.id]);
      expect(ttl.rows[0].ttl).toBeGreaterThanOrEqual(119);
      expect(ttl.rows[0].ttl).toBeLessThan(200);
      expect((await h.call('PUT', '/api/v1/configurations/idempotency.key.ttl', { body: { value: 86_400 } })).status).toBe(200);
      await waitFor(async () => (await h.call('GET', `/api/v1/snapshots/${short.body.id}`, { key: user.key })).body.state === 'BackedUp', 30_000, 'BackedUp');
    });

    it('concurrent duplicates never make a second snapshot: same volume waits for the first, another volume is 409', async () => {
      const same = await Promise.all([1, 2, 3, 4].map(() => snapshot(disks[1]!, { name: 'idem-race', asyncBackup: true }, 'k-race')));
      expect(same.map((r) => r.status).sort()).toEqual([200, 200, 200, 201]);
      expect(new Set(same.map((r) => r.body.id)).size).toBe(1);
      await waitFor(async () => (await h.call('GET', `/api/v1/snapshots/${same[0]!.body.id}`, { key: user.key })).body.state === 'BackedUp', 30_000, 'BackedUp');

      const split = await Promise.all(disks.map((d) => snapshot(d, { name: 'idem-split', asyncBackup: true }, 'k-split')));
      expect(split.map((r) => r.status).sort()).toEqual([201, 409]);
      expect(split.find((r) => r.status === 409)!.body.error.code).toBe('IDEMPOTENCY_KEY_REUSED');
      const { rows } = await h.stack.pool.query('SELECT count(*)::int AS n FROM snapshots WHERE account_id = $1 AND idempotency_key = $2', [user.id, 'k-split']);
      expect(rows[0].n).toBe(1);
      const winner = split.find((r) => r.status === 201)!.body.id;
      await waitFor(async () => (await h.call('GET', `/api/v1/snapshots/${winner}`, { key: user.key })).body.state === 'BackedUp', 30_000, 'BackedUp');
    });
  });

  describe('resource bounds', () => {
    it('a client sending its body too slowly gets 408 REQUEST_TIMEOUT and is disconnected; a long answer is not cut', async () => {
      const server = await listen(createApp(h.stack), '127.0.0.1', 0, silentLogger, { bodyTimeoutMs: 1000 });
      try {
        const started = Date.now();
        const { text, closed } = await new Promise<{ text: string; closed: boolean }>((resolve, reject) => {
          const socket = connect(server.port, '127.0.0.1');
          let text = '';
          socket.setEncoding('utf8');
          socket.on('data', (d) => (text += d));
          socket.on('error', reject);
          socket.on('close', () => resolve({ text, closed: true }));
          socket.write(`POST /api/v1/accounts HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"na`);
          // A byte now and then: each arrives, the whole body never does.
          const drip = setInterval(() => socket.writable && socket.write(' '), 200);
          socket.on('close', () => clearInterval(drip));
          setTimeout(() => reject(new Error(`not disconnected; got ${JSON.stringify(text)}`)), 8000);
        });
        expect(closed).toBe(true);
        expect(Date.now() - started).toBeLessThan(5000);
        expect(text).toMatch(/^HTTP\/1\.1 408 /);
        const body = JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4));
        expect(body.error.code).toBe('REQUEST_TIMEOUT');

        // A synchronous snapshot answers after its backup's last attempt (here ~2 s, twice the body timeout).
        const user = await h.createUser('slow-sync');
        const vm = await h.call('POST', '/api/v1/vms', { key: user.key, body: { name: 'slow-vm', hypervisor: 'KVM', rootDiskSizeBytes: MiB } });
        await h.setConfig('backup.max.attempts', 2);
        await h.setConfig('backup.retry.interval', 2);
        await h.breakImageStore();
        try {
          const t0 = Date.now();
          const res = await fetch(`http://127.0.0.1:${server.port}/api/v1/volumes/${vm.body.volumes[0].id}/snapshots`, {
            method: 'POST',
            headers: { authorization: `Bearer ${user.key}`, 'content-type': 'application/json' },
            body: JSON.stringify({ asyncBackup: false }),
          });
          expect(Date.now() - t0).toBeGreaterThan(1500);
          expect(res.status).toBe(409);
          expect(((await res.json()) as { error: { code: string } }).error.code).toBe('SNAPSHOT_BACKUP_FAILED');
        } finally {
          await h.restoreImageStore();
          await h.setConfig('backup.max.attempts', 3);
          await h.setConfig('backup.retry.interval', 300);
        }
      } finally {
        await server.close();
      }
    });

    it('a key over its rate gets 429 RATE_LIMITED with Retry-After; other keys go on', async () => {
      const app = createApp(h.stack, { limits: { ratePerMinute: 60, rateBurst: 3 } });
      const user = await h.createUser('rate-user');
      const other = (await h.call('POST', '/api/v1/accounts/me/keys', { key: user.key, body: { name: 'other' } })).body.apiKey as string;
      const get = (key: string) => app.request('/api/v1/vms', { headers: { authorization: `Bearer ${key}` } });
      for (let i = 0; i < 3; i++) expect((await get(user.key)).status).toBe(200);
      const refused = await get(user.key);
      expect(refused.status).toBe(429);
      expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      expect(((await refused.json()) as { error: { code: string } }).error.code).toBe('RATE_LIMITED');
      expect((await get(other)).status).toBe(200);

      // The CloudStack dialect counts per key pair too, and answers as CloudStack's api.throttling does.
      const cs = (await h.call('POST', '/api/v1/accounts', { body: { name: 'rate-cs', role: 'user' } })).body.cloudstack as { apiKey: string; secretKey: string };
      const signed = () => {
        const params: Record<string, string> = { command: 'listVolumes', response: 'json', apiKey: cs.apiKey };
        return app.request(`/client/api?${new URLSearchParams({ ...params, signature: signRequest(cs.secretKey, params) })}`);
      };
      for (let i = 0; i < 3; i++) expect((await signed()).status).toBe(200);
      const throttled = await signed();
      expect(throttled.status).toBe(429);
      expect(Number(throttled.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      expect(((await throttled.json()) as { listvolumesresponse: { errorcode: number } }).listvolumesresponse.errorcode).toBe(429);
    });

    it('an account may hold EVENT_STREAMS_PER_ACCOUNT streams; one more is 429 TOO_MANY_STREAMS until one closes', async () => {
      const app = createApp(h.stack, { limits: { streamsPerAccount: 2 } });
      const user = await h.createUser('stream-user');
      const open = () => app.request('/api/v1/events/stream', { headers: { authorization: `Bearer ${user.key}` } });
      const a = await open();
      const b = await open();
      expect([a.status, b.status]).toEqual([200, 200]);
      const c = await open();
      expect(c.status).toBe(429);
      expect(c.headers.get('retry-after')).toBe('30');
      expect(((await c.json()) as { error: { code: string } }).error.code).toBe('TOO_MANY_STREAMS');
      // Another account is not affected.
      const admin = await app.request('/api/v1/events/stream', { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
      expect(admin.status).toBe(200);
      await admin.body!.cancel();
      await a.body!.cancel();
      const d = await waitFor(async () => {
        const r = await open();
        if (r.status === 200) return r;
        await r.body?.cancel();
        return undefined;
      }, 5000, 'a free stream slot');
      await Promise.all([b.body!.cancel(), d.body!.cancel()]);
    });

    it('GET /snapshots and /events are paged: limit up to 1000, X-Next-Cursor and Link name the next page', async () => {
      const all = await h.call('GET', '/api/v1/snapshots?limit=1000');
      expect(all.status).toBe(200);
      expect(all.headers.get('x-next-cursor')).toBeNull();
      expect(all.body.length).toBeGreaterThan(4);
      const seen: string[] = [];
      let path = '/api/v1/snapshots?limit=2';
      for (let i = 0; i < 100; i++) {
        const res = await h.call('GET', path);
        expect(res.status).toBe(200);
        expect(res.body.length).toBeLessThanOrEqual(2);
        seen.push(...res.body.map((s: { id: string }) => s.id));
        const next = res.headers.get('x-next-cursor');
        if (!next) break;
        expect(next).toBe(res.body[1].id);
        expect(res.headers.get('link')).toBe(`</api/v1/snapshots?limit=2&after=${next}>; rel="next"`);
        path = `/api/v1/snapshots?limit=2&after=${next}`;
      }
      expect(seen).toEqual(all.body.map((s: { id: string }) => s.id));
      expect((await h.call('GET', '/api/v1/snapshots?limit=1001')).status).toBe(400);

      // VMs and volumes the same way; a VM's volumes (one creation time) stay in device order across pages.
      for (const [path, min] of [['/api/v1/vms', 2], ['/api/v1/volumes', 4]] as const) {
        const whole = (await h.call('GET', `${path}?limit=1000`)).body.map((v: { id: string }) => v.id);
        expect(whole.length, path).toBeGreaterThanOrEqual(min);
        const paged: string[] = [];
        let next: string | null = null;
        do {
          const res: { body: Array<{ id: string }>; headers: Headers } = await h.call('GET', `${path}?limit=2${next ? `&after=${next}` : ''}`);
          paged.push(...res.body.map((v) => v.id));
          next = res.headers.get('x-next-cursor');
        } while (next);
        expect(paged, path).toEqual(whole);
      }
      const defaultPage = await h.call('GET', '/api/v1/events');
      expect(defaultPage.body.length).toBeLessThanOrEqual(100);

      const events = await h.call('GET', '/api/v1/events?limit=3');
      expect(events.body).toHaveLength(3);
      expect(events.headers.get('x-next-cursor')).toBe(String(events.body[2].id));
      const rest = await h.call('GET', `/api/v1/events?limit=3&since=${events.headers.get('x-next-cursor')}`);
      expect(rest.body[0].id).toBeGreaterThan(events.body[2].id);
      expect((await h.call('GET', '/api/v1/events?limit=5000')).status).toBe(400);
    });
  });

  // Last: it changes the admin's key and puts it back.
  describe('ADMIN_API_KEY', () => {
    it('setting another value adds that key and revokes the previous one; going back restores it; it re-enables the admin', async () => {
      const file = '/nonexistent/admin-api-key';
      await ensureAdminAccount(h.stack.pool, 'rotated-admin-key', silentLogger, file);
      expect((await h.call('GET', '/api/v1/vms', { key: 'rotated-admin-key' })).status).toBe(200);
      expect((await h.call('GET', '/api/v1/vms', { key: ADMIN_KEY })).status).toBe(401);
      // Keys made through the API are left alone.
      const extra = await h.call('POST', '/api/v1/accounts/me/keys', { key: 'rotated-admin-key', body: { name: 'api-made' } });
      await ensureAdminAccount(h.stack.pool, ADMIN_KEY, silentLogger, file);
      expect((await h.call('GET', '/api/v1/vms', { key: ADMIN_KEY })).status).toBe(200);
      expect((await h.call('GET', '/api/v1/vms', { key: 'rotated-admin-key' })).status).toBe(401);
      expect((await h.call('GET', '/api/v1/vms', { key: extra.body.apiKey })).status).toBe(200);

      // Another admin disabled the first one: ADMIN_API_KEY is the way back in.
      const second = await h.call('POST', '/api/v1/accounts', { body: { name: 'second-admin', role: 'admin' } });
      const me = (await h.call('GET', '/api/v1/accounts/me')).body;
      expect((await h.call('PATCH', `/api/v1/accounts/${me.id}`, { key: second.body.apiKey, body: { disabled: true } })).status).toBe(200);
      expect((await h.call('GET', '/api/v1/vms')).status).toBe(401);
      await ensureAdminAccount(h.stack.pool, ADMIN_KEY, silentLogger, file);
      expect((await h.call('GET', '/api/v1/vms')).status).toBe(200);
    });
  });
});
