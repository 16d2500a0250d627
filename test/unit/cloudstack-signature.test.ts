import { describe, expect, it } from 'vitest';
import { canonicalRequest, javaUrlEncode, parseExpires, signRequest, verifySignature } from '../../api/cloudstack/signature.js';
import { lowerCaseParams, parseParams, listResponse } from '../../api/cloudstack/params.js';

// Vectors computed with the `cs` client (PyPI cs 5.2.0, CloudStack._sign), which signs as ApiServer verifies.
const DOC_SECRET = 'VDaACYb0LV9eNjTetIOElcVQkvJck_J_QljX_FcHRj87ZKiy0z0ty0ZsYBkoXkY9b7eq1EhwJaw7FF3akA3KBQ';
const DOC_PARAMS = { apiKey: 'miVr6X7u6bN_sdahOBpjNejPgEsT35eXq-jB8CG20YI3yaxXcgpyuaIRmFI_EJTVwZ0nUkkJbPmY3y2bciKwFQ', command: 'listUsers', response: 'json' };
const TRICKY = {
  apiKey: 'AK',
  command: 'createSnapshot',
  response: 'json',
  volumeid: '0f7e2d86-2e64-4ddc-a073-6a30c90ae646',
  name: 'nightly backup/1 + ü*',
  signatureVersion: '3',
  expires: '2030-01-02T03:04:05+0000',
  'tags[0].key': 'a b',
};

describe('CloudStack request signature (ApiServer.verifyRequest)', () => {
  it('encodes values as java.net.URLEncoder, spaces as %20', () => {
    expect(javaUrlEncode('a b+c/d*e_f.g-h~i')).toBe('a%20b%2Bc%2Fd*e_f.g-h%7Ei');
    expect(javaUrlEncode('ü')).toBe('%C3%BC');
    expect(javaUrlEncode('2030-01-02T03:04:05+0000')).toBe('2030-01-02T03%3A04%3A05%2B0000');
  });

  it('signs the sorted, encoded, lower-cased parameters without `signature`', () => {
    expect(canonicalRequest({ ...DOC_PARAMS, signature: 'ignored' })).toBe(
      'apikey=mivr6x7u6bn_sdahobpjnejpgest35exq-jb8cg20yi3yaxxcgpyuairmfi_ejtvwz0nukkjbpmy3y2bcikwfq&command=listusers&response=json',
    );
    expect(signRequest(DOC_SECRET, DOC_PARAMS)).toBe('7/4DCg7EoFzRI3MFubv4EsRjTKU=');
  });

  it('matches what the cs client computes for spaces, reserved characters, UTF-8 and map parameters', () => {
    expect(signRequest('s3cr3t', TRICKY)).toBe('aMC7bILOLlFxiBgpc7LizBvkAqI=');
    expect(verifySignature('s3cr3t', new Map(Object.entries(TRICKY)), 'aMC7bILOLlFxiBgpc7LizBvkAqI=')).toBe(true);
  });

  it('refuses a wrong signature, a wrong secret, a changed parameter and a truncated signature', () => {
    expect(verifySignature('s3cr3t', TRICKY, 'aMC7bILOLlFxiBgpc7LizBvkAqJ=')).toBe(false);
    expect(verifySignature('other', TRICKY, 'aMC7bILOLlFxiBgpc7LizBvkAqI=')).toBe(false);
    expect(verifySignature('s3cr3t', { ...TRICKY, volumeid: '1f7e2d86-2e64-4ddc-a073-6a30c90ae646' }, 'aMC7bILOLlFxiBgpc7LizBvkAqI=')).toBe(false);
    expect(verifySignature('s3cr3t', TRICKY, 'aMC7bILOLlFxiBgpc7')).toBe(false);
    expect(verifySignature('s3cr3t', TRICKY, '')).toBe(false);
  });

  it('is case-insensitive in values (the string is lower-cased) but not in the secret', () => {
    expect(signRequest('k', { command: 'listZones', response: 'JSON' })).toBe(signRequest('k', { command: 'listzones', response: 'json' }));
    expect(signRequest('K', { command: 'listZones' })).not.toBe(signRequest('k', { command: 'listZones' }));
  });

  it('accepts a + that arrived as a space, and the order CloudMonkey 5 sorts in (by lower-cased name)', () => {
    const params = { Zeta: '1', alpha: '2', command: 'listZones' };
    const sig = signRequest('k', params);
    expect(verifySignature('k', params, sig.replace(/\+/g, ' '))).toBe(true);
    const cmkOrder = signRequest('k', params); // same parameters, either order verifies
    expect(canonicalRequest(params)).toBe('zeta=1&alpha=2&command=listzones');
    expect(canonicalRequest(params, true)).toBe('alpha=2&command=listzones&zeta=1');
    expect(verifySignature('k', params, cmkOrder)).toBe(true);
  });

  it('parses `expires` as CloudStack writes it', () => {
    expect(parseExpires('2030-01-02T03:04:05+0000')?.toISOString()).toBe('2030-01-02T03:04:05.000Z');
    expect(parseExpires('2030-01-02T03:04:05+0100')?.toISOString()).toBe('2030-01-02T02:04:05.000Z');
    expect(parseExpires('2030-01-02T03:04:05Z')?.toISOString()).toBe('2030-01-02T03:04:05.000Z');
    expect(parseExpires('2030-01-02 03:04:05')).toBeUndefined();
    expect(parseExpires('tomorrow')).toBeUndefined();
  });
});

describe('CloudStack parameters', () => {
  const specs = [
    { name: 'volumeid', type: 'uuid', required: true, description: '' },
    { name: 'asyncbackup', type: 'boolean', description: '' },
    { name: 'size', type: 'long', description: '' },
    { name: 'tags', type: 'map', description: '' },
  ] as const;

  it('matches names case-insensitively, ignores unknown ones and parses maps', () => {
    const p = parseParams('createSnapshot', [...specs], lowerCaseParams(new Map([
      ['volumeId', '6F7E2D86-2E64-4DDC-A073-6A30C90AE646'],
      ['asyncBackup', 'TRUE'],
      ['whatever', 'x'],
      ['tags[0].key', 'k'],
      ['tags[0].value', 'v'],
    ])));
    expect(p).toEqual({ volumeid: '6f7e2d86-2e64-4ddc-a073-6a30c90ae646', asyncbackup: true, tags: [{ key: 'k', value: 'v' }] });
  });

  it('431 naming the parameter for a missing required one and for wrong types', () => {
    const call = (m: Record<string, string>) => () => parseParams('createSnapshot', [...specs], lowerCaseParams(new Map(Object.entries(m))));
    expect(call({})).toThrow(expect.objectContaining({ errorCode: 431, message: expect.stringContaining('missing parameter volumeid') }));
    expect(call({ volumeid: 'nope' })).toThrow(expect.objectContaining({ errorCode: 431, message: expect.stringContaining('volumeid') }));
    expect(call({ volumeid: '6f7e2d86-2e64-4ddc-a073-6a30c90ae646', asyncbackup: 'yes' })).toThrow(expect.objectContaining({ errorCode: 431, message: expect.stringContaining('asyncbackup') }));
    expect(call({ volumeid: '6f7e2d86-2e64-4ddc-a073-6a30c90ae646', size: '1.5' })).toThrow(expect.objectContaining({ errorCode: 431, message: expect.stringContaining('size') }));
  });

  it('lists as CloudStack does: {count, key: [...]}, {} when empty, pages', () => {
    expect(listResponse('zone', [])).toEqual({});
    expect(listResponse('zone', [1, 2, 3])).toEqual({ count: 3, zone: [1, 2, 3] });
    expect(listResponse('zone', [1, 2, 3], 2, 2)).toEqual({ count: 3, zone: [3] });
    expect(listResponse('zone', [1, 2, 3], 3, 2)).toEqual({ count: 3 });
  });
});
