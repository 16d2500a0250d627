import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signRequest } from '../../api/cloudstack/signature.js';
import { ADMIN_KEY, startApiHarness, type ApiHarness } from './harness.js';

/** Issue 17: API keys and accounts, idempotency, resource bounds. */
describe('API security', () => {
  let h: ApiHarness;

  beforeAll(async () => {
    h = await startApiHarness();
  });
  afterAll(async () => {
    await h?.stop();
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

      // Another account's keys: 403 for a user, visible to an admin; a key of another account is 404.
      const carol = await h.createUser('km-carol');
      expect((await h.call('GET', `/api/v1/accounts/${bob.id}/keys`, { key: carol.key })).status).toBe(403);
      expect((await h.call('GET', `/api/v1/accounts/${bob.id}/keys`)).body).toHaveLength(2);
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

    it('ADMIN_API_KEY keeps working and its key is listed', async () => {
      const keys = await h.call('GET', '/api/v1/accounts/me/keys', { key: ADMIN_KEY });
      expect(keys.body.map((k: { name: string }) => k.name)).toContain('ADMIN_API_KEY');
    });
  });
});
