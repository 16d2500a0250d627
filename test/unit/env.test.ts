import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadEnv } from '../../config/env.js';

describe('loadEnv defaults (docs/design.md §9)', () => {
  const env = loadEnv({});

  it('PORT 8080, TEMPORAL_UI_PORT 8233', () => {
    expect(env.PORT).toBe(8080);
    expect(env.TEMPORAL_UI_PORT).toBe(8233);
  });

  it('data dir ./.data resolved to an absolute path', () => {
    expect(env.VOLSNAP_DATA_DIR).toBe('./.data');
    expect(path.isAbsolute(env.dataDir)).toBe(true);
    expect(env.dataDir).toBe(path.resolve(process.cwd(), '.data'));
  });

  it('no DATABASE_URL, TEMPORAL_ADDRESS or ADMIN_API_KEY: the embedded defaults apply', () => {
    expect(env.DATABASE_URL).toBeUndefined();
    expect(env.TEMPORAL_ADDRESS).toBeUndefined();
    expect(env.ADMIN_API_KEY).toBeUndefined();
  });

  it('does not read process.env when given a source', () => {
    const before = process.env.PORT;
    process.env.PORT = '9999';
    try {
      expect(loadEnv({}).PORT).toBe(8080);
    } finally {
      if (before === undefined) delete process.env.PORT;
      else process.env.PORT = before;
    }
  });
});

describe('loadEnv overrides', () => {
  it('parses numeric ports from strings', () => {
    const env = loadEnv({ PORT: '3000', TEMPORAL_UI_PORT: '18233' });
    expect(env.PORT).toBe(3000);
    expect(env.TEMPORAL_UI_PORT).toBe(18233);
  });

  it('resolves a relative VOLSNAP_DATA_DIR and keeps an absolute one', () => {
    expect(loadEnv({ VOLSNAP_DATA_DIR: 'state/here' }).dataDir).toBe(path.resolve(process.cwd(), 'state/here'));
    expect(loadEnv({ VOLSNAP_DATA_DIR: '/var/lib/volsnap' }).dataDir).toBe('/var/lib/volsnap');
  });

  it('keeps a DATABASE_URL that is set', () => {
    expect(loadEnv({ DATABASE_URL: 'postgres://u:p@db:5432/volsnap' }).DATABASE_URL).toBe('postgres://u:p@db:5432/volsnap');
  });

  it('treats an empty DATABASE_URL (and other optional strings) as unset', () => {
    const env = loadEnv({ DATABASE_URL: '', TEMPORAL_ADDRESS: '', ADMIN_API_KEY: '' });
    expect(env.DATABASE_URL).toBeUndefined();
    expect(env.TEMPORAL_ADDRESS).toBeUndefined();
    expect(env.ADMIN_API_KEY).toBeUndefined();
  });
});

describe('loadEnv errors', () => {
  it.each(['abc', '70000', '65536', '-1', '80.5'])('invalid PORT %j → an error naming PORT', (value) => {
    expect(() => loadEnv({ PORT: value })).toThrow(/\bPORT\b/);
  });

  it('the PORT error does not blame other variables', () => {
    let message = '';
    try {
      loadEnv({ PORT: 'abc' });
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(/^\s*PORT:/m);
    expect(message).not.toMatch(/TEMPORAL_UI_PORT|DATABASE_URL|VOLSNAP_DATA_DIR/);
  });

  it('invalid TEMPORAL_UI_PORT → an error naming TEMPORAL_UI_PORT', () => {
    expect(() => loadEnv({ TEMPORAL_UI_PORT: 'ui' })).toThrow(/TEMPORAL_UI_PORT/);
  });
});

describe('WORKER_SHUTDOWN_GRACE_SECONDS', () => {
  it('defaults to 300 s and parses a number', () => {
    expect(loadEnv({}).WORKER_SHUTDOWN_GRACE_SECONDS).toBe(300);
    expect(loadEnv({ WORKER_SHUTDOWN_GRACE_SECONDS: '45' }).WORKER_SHUTDOWN_GRACE_SECONDS).toBe(45);
  });
  it('refuses a negative or non-numeric value, naming the variable', () => {
    expect(() => loadEnv({ WORKER_SHUTDOWN_GRACE_SECONDS: '-1' })).toThrow(/WORKER_SHUTDOWN_GRACE_SECONDS/);
    expect(() => loadEnv({ WORKER_SHUTDOWN_GRACE_SECONDS: 'soon' })).toThrow(/WORKER_SHUTDOWN_GRACE_SECONDS/);
  });
});

describe('empty variables mean unset', () => {
  it('PORT= falls back to 8080 rather than a random port', () => {
    expect(loadEnv({ PORT: '' }).PORT).toBe(8080);
  });
  it('BACKUP_RATE_LIMIT_BYTES_PER_SEC= means no cap', () => {
    expect(loadEnv({ BACKUP_RATE_LIMIT_BYTES_PER_SEC: '' }).BACKUP_RATE_LIMIT_BYTES_PER_SEC).toBeUndefined();
  });
});
