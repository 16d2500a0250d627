import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signRequest } from '../../api/cloudstack/signature.js';
import { COMMANDS } from '../../api/cloudstack/commands.js';
import { KNOWN_UNSERVED_COMMANDS } from '../../services/cloudstack/errors.js';
import { startApiHarness, type ApiHarness } from './harness.js';

/**
 * Commands volsnap's CloudStack dialect does not serve: 432 with CloudStack's own text, and for a command
 * CloudStack has, a word that it is CloudStack's but not served here. An admin-only command asked by a user
 * reads as CloudStack's 432 alone (a user does not learn which admin commands exist).
 */
describe('CloudStack API: commands not served', () => {
  let h: ApiHarness;
  let user: { apiKey: string; secretKey: string };

  const cs = async (keys: { apiKey: string; secretKey: string }, command: string) => {
    const params: Record<string, string> = { command, response: 'json', apiKey: keys.apiKey };
    const query = new URLSearchParams({ ...params, signature: signRequest(keys.secretKey, params) });
    const res = await h.app.request(`/client/api?${query}`);
    const body = (await res.json()) as Record<string, { errorcode: number; errortext: string }>;
    return { status: res.status, error: body[`${command.toLowerCase()}response`]! };
  };

  beforeAll(async () => {
    h = await startApiHarness();
    user = (await h.call('POST', '/api/v1/accounts', { body: { name: 'cs-unserved', role: 'user' } })).body.cloudstack;
  });
  afterAll(async () => {
    await h?.stop();
  });

  it('a command CloudStack has and volsnap does not serve: 432, CloudStack\'s text, then that it is not served here', async () => {
    const r = await cs(user, 'createVMSnapshot');
    expect(r.status).toBe(432);
    expect(r.error.errorcode).toBe(432);
    expect(r.error.errortext).toBe(
      'The given command:createVMSnapshot does not exist or it is not available for user; createVMSnapshot is a CloudStack command ' +
        'that volsnap does not serve (listApis lists the commands it does; docs/cloudstack.md)',
    );
  });

  it('a name CloudStack does not have: 432 with CloudStack\'s text alone', async () => {
    const r = await cs(user, 'fooBarSnapshot');
    expect(r.status).toBe(432);
    expect(r.error.errortext).toBe('The given command:fooBarSnapshot does not exist or it is not available for user');
  });

  it('an admin-only command asked by a user reads as unknown, with no hint', async () => {
    const r = await cs(user, 'updateConfiguration');
    expect(r.status).toBe(432);
    expect(r.error.errortext).toBe('The given command:updateConfiguration does not exist or it is not available for user');
  });

  it('no served command is on the list of those not served', () => {
    const served = new Set(COMMANDS.map((c) => c.name.toLowerCase()));
    expect(KNOWN_UNSERVED_COMMANDS.filter((c) => served.has(c.toLowerCase()))).toEqual([]);
  });
});
