import { randomUUID } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MiB, startApiHarness, waitFor, type ApiHarness } from './harness.js';

/** Accounts, tenancy, catalogs, configuration, VM and volume storage effects, and the error contract. */
describe('HTTP API contract', () => {
  let h: ApiHarness;
  let alice: { id: string; key: string };
  let bob: { id: string; key: string };

  beforeAll(async () => {
    h = await startApiHarness();
    alice = await h.createUser('alice');
    bob = await h.createUser('bob');
  });
  afterAll(async () => {
    await h?.stop();
  });

  describe('accounts and keys', () => {
    it('answers 401 without a key or with a wrong one', async () => {
      for (const key of [null, 'vs_wrong', '']) {
        const res = await h.call('GET', '/api/v1/vms', { key });
        expect(res.status).toBe(401);
        expect(res.body.error.code).toBe('UNAUTHORIZED');
        expect(res.body.error.message).toBeTypeOf('string');
      }
    });

    it('creates accounts with random vs_ keys, admin only', async () => {
      const res = await h.call('POST', '/api/v1/accounts', { body: { name: 'carol', role: 'user' } });
      expect(res.status).toBe(201);
      expect(res.body).toMatchObject({ name: 'carol', role: 'user' });
      expect(res.body.apiKey).toMatch(/^vs_[A-Za-z0-9_-]{43}$/);
      const { rows } = await h.stack.pool.query('SELECT key_hash FROM api_keys WHERE account_id = $1', [res.body.id]);
      expect(rows).toHaveLength(1);
      expect(rows[0].key_hash).toMatch(/^[0-9a-f]{64}$/);
      expect(rows[0].key_hash).not.toContain(res.body.apiKey);
      expect((await h.call('GET', '/api/v1/vms', { key: res.body.apiKey })).status).toBe(200);

      expect((await h.call('POST', '/api/v1/accounts', { key: alice.key, body: { name: 'mallory', role: 'admin' } })).status).toBe(403);
      const dup = await h.call('POST', '/api/v1/accounts', { body: { name: 'carol', role: 'user' } });
      expect(dup.status).toBe(409);
      expect(dup.body.error.code).toBe('ACCOUNT_EXISTS');
    });
  });

  describe('catalogs, OpenAPI and docs', () => {
    it('lists the seeded catalogs', async () => {
      for (const path of ['/api/v1/isos', '/api/v1/service-offerings', '/api/v1/hosts', '/api/v1/storage-pools']) {
        const res = await h.call('GET', path, { key: alice.key });
        expect(res.status, path).toBe(200);
        expect(res.body.length, path).toBeGreaterThanOrEqual(2);
      }
      // KVM VMs are records here (KVM_COMPUTE=none): no host has a worker to report.
      const hosts = (await h.call('GET', '/api/v1/hosts', { key: alice.key })).body as Array<{ hostWorkerLastPoll: unknown }>;
      expect(hosts.map((x) => x.hostWorkerLastPoll)).toEqual(hosts.map(() => null));
    });

    it('serves /openapi.json generated from the route schemas, and /docs', async () => {
      const doc = await h.call('GET', '/openapi.json', { key: null });
      expect(doc.status).toBe(200);
      expect(doc.body.openapi).toBe('3.1.0');
      for (const path of ['/api/v1/vms/{id}/actions', '/api/v1/volumes/{id}/snapshots', '/api/v1/snapshots/{id}', '/api/v1/events/stream', '/api/v1/configurations/{name}']) {
        expect(Object.keys(doc.body.paths)).toContain(path);
      }
      expect(doc.body.components.schemas.Snapshot.properties.backup).toBeDefined();
      // The rules the server applies are in the document: sector-sized volume sizes, one schema per SSE event.
      const createVolume = doc.body.paths['/api/v1/volumes'].post.requestBody.content['application/json'].schema;
      const createVolumeSchema = createVolume.$ref ? doc.body.components.schemas[createVolume.$ref.split('/').pop()] : createVolume;
      expect(createVolumeSchema.properties.sizeBytes).toMatchObject({ type: 'integer', multipleOf: 512 });
      expect(doc.body.paths['/api/v1/events/stream'].get.responses['200'].content['text/event-stream'].schema).toEqual({ $ref: '#/components/schemas/ServerSentEvent' });
      expect(doc.body.components.schemas.ServerSentEvent.required).toEqual(['data']);
      const docs = await h.call('GET', '/docs', { key: null });
      expect(docs.status).toBe(200);
      expect(docs.headers.get('content-type')).toMatch(/text\/html/);
      expect(docs.body).toContain('/openapi.json');
      // Workers show up as task-queue pollers shortly after start-up.
      await waitFor(async () => (await h.call('GET', '/healthz', { key: null })).status === 200, 30_000, 'healthz 200');
    });
  });

  describe('configuration', () => {
    it('lists settings and lets admins change them, validated per key', async () => {
      const list = await h.call('GET', '/api/v1/configurations', { key: alice.key });
      expect(list.status).toBe(200);
      expect(list.body.map((s: { name: string }) => s.name)).toEqual(expect.arrayContaining(['backup.max.attempts', 'backup.retry.interval']));

      expect((await h.call('PUT', '/api/v1/configurations/backup.max.attempts', { key: alice.key, body: { value: 5 } })).status).toBe(403);
      const ok = await h.call('PUT', '/api/v1/configurations/backup.max.attempts', { body: { value: 4 } });
      expect(ok.status).toBe(200);
      expect(ok.body).toMatchObject({ name: 'backup.max.attempts', value: 4, defaultValue: 3 });
      const back = await h.call('PUT', '/api/v1/configurations/backup.max.attempts', { body: { value: '3' } });
      expect(back.body.value).toBe(3);
    });
  });

  describe('storage GC', () => {
    it('runs on demand for admins and answers what it cleaned', async () => {
      expect((await h.call('POST', '/api/v1/storage/gc', { key: alice.key })).status).toBe(403);
      const res = await h.call('POST', '/api/v1/storage/gc');
      expect(res.status).toBe(200);
      expect(res.body).toMatchObject({ trigger: 'manual', reconciled: [], failures: [] });
      expect((await h.call('PUT', '/api/v1/configurations/storage.cleanup.interval', { body: { value: 600 } })).status).toBe(200);
    });
  });

  describe('VMs and volumes act on storage', () => {
    it('creates a VM with ROOT and data disk images in the first KVM pool; destroy deletes ROOT and detaches data disks', async () => {
      const res = await h.call('POST', '/api/v1/vms', {
        key: alice.key,
        body: { name: 'web-1', hypervisor: 'KVM', rootDiskSizeBytes: 2 * MiB, dataDisks: [{ sizeBytes: MiB }, { name: 'logs', sizeBytes: MiB }] },
      });
      expect(res.status).toBe(201);
      const vm = res.body;
      expect(vm).toMatchObject({ name: 'web-1', state: 'Running', hypervisor: 'KVM', accountId: alice.id });
      expect(vm.volumes.map((v: { type: string }) => v.type)).toEqual(['ROOT', 'DATADISK', 'DATADISK']);
      expect(vm.volumes[2].name).toBe('logs');
      // Host paths are for admins only: the owner's answer has none, the admin's has them.
      for (const v of vm.volumes) expect(v).not.toHaveProperty('path');
      const asAdmin = (await h.call('GET', `/api/v1/vms/${vm.id}`)).body;
      for (const v of asAdmin.volumes) {
        expect(v.path).toContain(join('primary', 'kvm-primary-1'));
        expect(existsSync(v.path)).toBe(true);
      }
      vm.volumes = asAdmin.volumes;

      const destroyed = await h.call('POST', `/api/v1/vms/${vm.id}/actions`, { key: alice.key, body: { action: 'destroy' } });
      expect(destroyed.status).toBe(200);
      expect(destroyed.body.state).toBe('Destroyed');
      expect(destroyed.body.volumes).toEqual([]);
      expect(existsSync(vm.volumes[0].path)).toBe(false);
      const root = await h.call('GET', `/api/v1/volumes/${vm.volumes[0].id}`, { key: alice.key });
      expect(root.body.state).toBe('Destroyed');
      const data = await h.call('GET', `/api/v1/volumes/${vm.volumes[1].id}`);
      expect(data.body).toMatchObject({ state: 'Ready', vmId: null });
      expect(existsSync(data.body.path)).toBe(true);

      const again = await h.call('POST', `/api/v1/vms/${vm.id}/actions`, { key: alice.key, body: { action: 'start' } });
      expect(again.status).toBe(409);
      expect(again.body.error.code).toBe('INVALID_STATE');
    });

    it('resizes, migrates, attaches, detaches and deletes volumes', async () => {
      const pools = (await h.call('GET', '/api/v1/storage-pools', { key: alice.key })).body;
      const made = (await h.call('POST', '/api/v1/volumes', { key: alice.key, body: { name: 'scratch', sizeBytes: MiB } })).body;
      expect(made).toMatchObject({ type: 'DATADISK', vmId: null, state: 'Ready', poolId: pools[0].id });
      expect(made).not.toHaveProperty('path');
      // Host paths are for admins only.
      const pathOf = async (id: string): Promise<string> => (await h.call('GET', `/api/v1/volumes/${id}`)).body.path;
      const vol = { ...made, path: await pathOf(made.id) };

      const grown = await h.call('POST', `/api/v1/volumes/${vol.id}/resize`, { key: alice.key, body: { sizeBytes: 4 * MiB } });
      expect(grown.status).toBe(200);
      expect(grown.body.sizeBytes).toBe(4 * MiB);
      const shrink = await h.call('POST', `/api/v1/volumes/${vol.id}/resize`, { key: alice.key, body: { sizeBytes: MiB } });
      expect(shrink.status).toBe(400);
      expect(shrink.body.error.details.fields.sizeBytes).toMatch(/shrinkOk/);
      expect((await h.call('POST', `/api/v1/volumes/${vol.id}/resize`, { key: alice.key, body: { sizeBytes: 2 * MiB, shrinkOk: true } })).body.sizeBytes).toBe(2 * MiB);

      const moved = await h.call('POST', `/api/v1/volumes/${vol.id}/migrate`, { key: alice.key, body: { poolId: pools[1].id } });
      expect(moved.status).toBe(200);
      expect(moved.body.poolId).toBe(pools[1].id);
      const movedPath = await pathOf(vol.id);
      expect(movedPath).toContain('kvm-primary-2');
      expect(existsSync(movedPath)).toBe(true);
      expect(existsSync(vol.path)).toBe(false);

      const vm = (await h.call('POST', '/api/v1/vms', { key: alice.key, body: { name: 'db-1', hypervisor: 'KVM', rootDiskSizeBytes: MiB } })).body;
      const attached = await h.call('POST', `/api/v1/vms/${vm.id}/actions`, { key: alice.key, body: { action: 'attach-volume', volumeId: vol.id } });
      expect(attached.status).toBe(200);
      expect(attached.body.volumes.map((v: { id: string }) => v.id)).toContain(vol.id);
      const busy = await h.call('DELETE', `/api/v1/volumes/${vol.id}`, { key: alice.key });
      expect(busy.status).toBe(409);
      expect(busy.body.error.code).toBe('VOLUME_ATTACHED');
      expect((await h.call('POST', `/api/v1/vms/${vm.id}/actions`, { key: alice.key, body: { action: 'detach-volume', volumeId: vol.id } })).status).toBe(200);
      const deleted = await h.call('DELETE', `/api/v1/volumes/${vol.id}`, { key: alice.key });
      expect(deleted.status).toBe(200);
      expect(deleted.body.state).toBe('Destroyed');
      expect(existsSync(movedPath)).toBe(false);
      expect((await h.call('GET', '/api/v1/volumes', { key: alice.key })).body.map((v: { id: string }) => v.id)).not.toContain(vol.id);
    });

    it('a failing storage operation answers 500 INTERNAL (no details) and changes nothing', async () => {
      const blocker = join(h.stack.dataDir, 'blocker-file');
      writeFileSync(blocker, 'not a directory');
      const broken = randomUUID();
      await h.stack.pool.query(`INSERT INTO storage_pools (id, name, hypervisor, path) VALUES ($1, 'kvm-broken', 'KVM', $2)`, [broken, join(blocker, 'pool')]);
      const count = async () => (await h.stack.pool.query('SELECT count(*)::int AS n FROM volumes')).rows[0].n;
      const before = await count();

      const created = await h.call('POST', '/api/v1/volumes', { key: alice.key, body: { name: 'nowhere', sizeBytes: MiB, poolId: broken } });
      expect(created.status).toBe(500);
      expect(created.body).toEqual({ error: { code: 'INTERNAL', message: 'internal error', details: {} } });
      expect(await count()).toBe(before);

      const made = (await h.call('POST', '/api/v1/volumes', { key: alice.key, body: { name: 'stays', sizeBytes: MiB } })).body;
      const vol = (await h.call('GET', `/api/v1/volumes/${made.id}`)).body;
      const moved = await h.call('POST', `/api/v1/volumes/${vol.id}/migrate`, { key: alice.key, body: { poolId: broken } });
      expect(moved.status).toBe(500);
      expect((await h.call('GET', `/api/v1/volumes/${vol.id}`)).body).toMatchObject({ poolId: vol.poolId, path: vol.path });
      expect(existsSync(vol.path)).toBe(true);
      await h.stack.pool.query('DELETE FROM storage_pools WHERE id = $1', [broken]);
    });

    it('refuses XenServer while no XenServer driver is configured', async () => {
      const res = await h.call('POST', '/api/v1/vms', { key: alice.key, body: { name: 'xen-1', hypervisor: 'XenServer', rootDiskSizeBytes: MiB } });
      expect(res.status).toBe(400);
      expect(res.body.error.details.fields.hypervisor).toMatch(/XenServer/);
    });
  });

  describe('tenancy', () => {
    it('hides other accounts\' VMs, volumes, snapshots and events (404); admins see all', async () => {
      const vm = (await h.call('POST', '/api/v1/vms', { key: alice.key, body: { name: 'private', hypervisor: 'KVM', rootDiskSizeBytes: MiB } })).body;
      const rootId = vm.volumes[0].id;
      const snap = await h.call('POST', `/api/v1/volumes/${rootId}/snapshots`, { key: alice.key, body: { name: 'mine' } });
      expect(snap.status).toBe(201);
      expect(snap.body.accountId).toBe(alice.id);

      const probes: Array<[string, string, unknown?]> = [
        ['GET', `/api/v1/vms/${vm.id}`],
        ['GET', `/api/v1/vms/${vm.id}/allowed-actions`],
        ['POST', `/api/v1/vms/${vm.id}/actions`, { action: 'stop' }],
        ['GET', `/api/v1/volumes/${rootId}`],
        ['POST', `/api/v1/volumes/${rootId}/resize`, { sizeBytes: 2 * MiB }],
        ['POST', `/api/v1/volumes/${rootId}/snapshots`, {}],
        ['DELETE', `/api/v1/volumes/${rootId}`],
        ['GET', `/api/v1/snapshots/${snap.body.id}`],
        ['DELETE', `/api/v1/snapshots/${snap.body.id}`],
        ['POST', `/api/v1/snapshots/${snap.body.id}/revert`],
        ['POST', `/api/v1/snapshots/${snap.body.id}/volumes`, {}],
      ];
      for (const [method, path, body] of probes) {
        const res = await h.call(method, path, { key: bob.key, ...(body !== undefined ? { body } : {}) });
        expect(res.status, `${method} ${path}`).toBe(404);
        expect(res.body.error.code).toBe('NOT_FOUND');
      }
      // Bob cannot attach Alice's volume to his own VM either.
      const bobVm = (await h.call('POST', '/api/v1/vms', { key: bob.key, body: { name: 'bobs', hypervisor: 'KVM', rootDiskSizeBytes: MiB } })).body;
      const aliceDisk = (await h.call('POST', '/api/v1/volumes', { key: alice.key, body: { name: 'alice-disk', sizeBytes: MiB } })).body;
      expect((await h.call('POST', `/api/v1/vms/${bobVm.id}/actions`, { key: bob.key, body: { action: 'attach-volume', volumeId: aliceDisk.id } })).status).toBe(404);

      const ids = async (key: string, path: string) => (await h.call('GET', path, { key })).body.map((r: { id: string }) => r.id);
      expect(await ids(bob.key, '/api/v1/vms')).toEqual([bobVm.id]);
      expect(await ids(bob.key, '/api/v1/vms')).not.toContain(vm.id);
      expect(await ids(bob.key, '/api/v1/volumes')).not.toContain(rootId);
      expect(await ids(bob.key, '/api/v1/snapshots')).toEqual([]);
      expect(await ids(alice.key, '/api/v1/snapshots')).toContain(snap.body.id);
      const bobEvents = (await h.call('GET', '/api/v1/events', { key: bob.key })).body;
      expect(bobEvents.length).toBeGreaterThan(0);
      expect(bobEvents.every((e: { accountId: string }) => e.accountId === bob.id)).toBe(true);

      expect(await ids(h.stack.env.ADMIN_API_KEY!, '/api/v1/vms')).toEqual(expect.arrayContaining([vm.id, bobVm.id]));
      expect((await h.call('GET', `/api/v1/snapshots/${snap.body.id}`)).status).toBe(200);
    });
  });

  describe('bad input is a 4xx with code and message, never a 5xx', () => {
    it.each([
      ['missing fields', 'POST', '/api/v1/vms', { body: { name: 'x' } }, 400, 'INVALID_INPUT'],
      ['wrong types', 'POST', '/api/v1/vms', { body: { name: 42, hypervisor: 'KVM', rootDiskSizeBytes: '1MiB' } }, 400, 'INVALID_INPUT'],
      ['negative size', 'POST', '/api/v1/volumes', { body: { name: 'neg', sizeBytes: -512 } }, 400, 'INVALID_INPUT'],
      ['size not a multiple of 512', 'POST', '/api/v1/volumes', { body: { name: 'odd', sizeBytes: 1000 } }, 400, 'INVALID_INPUT'],
      ['size beyond 16 TiB', 'POST', '/api/v1/volumes', { body: { name: 'huge', sizeBytes: 2 ** 60 } }, 400, 'INVALID_INPUT'],
      ['unknown hypervisor', 'POST', '/api/v1/vms', { body: { name: 'x', hypervisor: 'VMware', rootDiskSizeBytes: 1048576 } }, 400, 'INVALID_INPUT'],
      ['unknown field', 'POST', '/api/v1/volumes', { body: { name: 'x', sizeBytes: 1048576, colour: 'red' } }, 400, 'INVALID_INPUT'],
      ['empty name', 'POST', '/api/v1/volumes', { body: { name: '  ', sizeBytes: 1048576 } }, 400, 'INVALID_INPUT'],
      ['unknown VM action', 'POST', '/api/v1/vms/00000000-0000-4000-8000-000000000000/actions', { body: { action: 'explode' } }, 400, 'INVALID_INPUT'],
      ['action without its parameter', 'POST', '/api/v1/vms/00000000-0000-4000-8000-000000000000/actions', { body: { action: 'attach-iso' } }, 400, 'INVALID_INPUT'],
      ['bad UUID in path', 'GET', '/api/v1/vms/not-a-uuid', {}, 400, 'INVALID_INPUT'],
      ['bad UUID in path (volume)', 'POST', "/api/v1/volumes/1'%20OR%201=1/resize", { body: { sizeBytes: 1048576 } }, 400, 'INVALID_INPUT'],
      ['bad UUID in query', 'GET', '/api/v1/snapshots?volumeId=42', {}, 400, 'INVALID_INPUT'],
      ['unknown state filter', 'GET', '/api/v1/snapshots?state=Sleeping', {}, 400, 'INVALID_INPUT'],
      ['bad events cursor', 'GET', '/api/v1/events?since=-1', {}, 400, 'INVALID_INPUT'],
      ['empty events cursor', 'GET', '/api/v1/events?since=', {}, 400, 'INVALID_INPUT'],
      ['non-numeric events cursor', 'GET', '/api/v1/events?since=1e3', {}, 400, 'INVALID_INPUT'],
      ['unknown VM', 'GET', '/api/v1/vms/00000000-0000-4000-8000-000000000000', {}, 404, 'NOT_FOUND'],
      ['unknown ISO', 'POST', '/api/v1/vms/VMID/actions', { body: { action: 'attach-iso', isoId: '00000000-0000-4000-8000-000000000000' } }, 404, 'NOT_FOUND'],
      ['malformed JSON', 'POST', '/api/v1/volumes', { rawBody: '{"name": "x", ' }, 400, 'MALFORMED_JSON'],
      ['JSON that is not an object', 'POST', '/api/v1/volumes', { rawBody: '[1,2,3]' }, 400, 'INVALID_INPUT'],
      ['body over 1 MiB', 'POST', '/api/v1/volumes', { rawBody: JSON.stringify({ name: 'x'.repeat(1_100_000), sizeBytes: 1048576 }) }, 413, 'PAYLOAD_TOO_LARGE'],
      ['not JSON at all', 'POST', '/api/v1/volumes', { rawBody: 'name=x', headers: { 'content-type': 'text/plain' } }, 415, 'UNSUPPORTED_MEDIA_TYPE'],
      ['bad Idempotency-Key', 'POST', '/api/v1/volumes/00000000-0000-4000-8000-000000000000/snapshots', { body: {}, headers: { 'idempotency-key': 'has spaces in it' } }, 400, 'INVALID_INPUT'],
      ['unknown config key', 'PUT', '/api/v1/configurations/backup.colour', { body: { value: 1 } }, 404, 'NOT_FOUND'],
      ['config value out of range', 'PUT', '/api/v1/configurations/backup.max.attempts', { body: { value: 0 } }, 400, 'INVALID_INPUT'],
      ['config value not a number', 'PUT', '/api/v1/configurations/backup.retry.interval', { body: { value: 'soon' } }, 400, 'INVALID_INPUT'],
      ['config value missing', 'PUT', '/api/v1/configurations/backup.retry.interval', { body: {} }, 400, 'INVALID_INPUT'],
      ['unknown route', 'GET', '/api/v1/nothing-here', {}, 404, 'NOT_FOUND'],
      ['unknown top-level route', 'GET', '/nothing-here', {}, 404, 'NOT_FOUND'],
    ] as const)('%s', async (_what, method, path, opts, status, code) => {
      let target: string = path;
      if (path.includes('VMID')) {
        const vm = (await h.call('POST', '/api/v1/vms', { body: { name: 'target', hypervisor: 'KVM', rootDiskSizeBytes: MiB } })).body;
        target = path.replace('VMID', vm.id);
      }
      const res = await h.call(method, target, opts as object);
      expect(res.status).toBe(status);
      expect(res.body.error.code).toBe(code);
      expect(res.body.error.message).toBeTypeOf('string');
      expect(res.body.error.details).toBeTypeOf('object');
      expect(JSON.stringify(res.body)).not.toMatch(/\bat .*\.ts:\d+/);
      if (status === 400 && code === 'INVALID_INPUT') expect(Object.keys(res.body.error.details.fields ?? {}).length).toBeGreaterThan(0);
    });

    it('a known path asked with a method it does not serve is 405 with Allow; unknown paths stay 404', async () => {
      const res = await h.call('DELETE', '/api/v1/events');
      expect(res.status).toBe(405);
      expect(res.body.error.code).toBe('METHOD_NOT_ALLOWED');
      expect(res.headers.get('allow')).toBe('GET, HEAD');
      const onId = await h.call('PATCH', '/api/v1/volumes/00000000-0000-4000-8000-000000000000');
      expect(onId.status).toBe(405);
      expect(onId.headers.get('allow')).toMatch(/\bDELETE\b.*\bGET\b/);
      expect((await h.call('DELETE', '/api/v1/events/stream/extra')).status).toBe(404);
    });

    it('names each bad field', async () => {
      const res = await h.call('POST', '/api/v1/vms', { body: { name: '', hypervisor: 'KVM', rootDiskSizeBytes: -1, dataDisks: [{ sizeBytes: 'big' }] } });
      expect(res.status).toBe(400);
      expect(Object.keys(res.body.error.details.fields)).toEqual(expect.arrayContaining(['name', 'rootDiskSizeBytes', 'dataDisks.0.sizeBytes']));
    });
  });
});
