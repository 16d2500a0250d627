import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { tailFile } from '../../services/file-tail.js';

describe('tailFile (a VM console log tail)', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'volsnap-tail-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('answers the last lines, oldest first, and whether earlier ones exist', async () => {
    const file = path.join(dir, 'a.log');
    writeFileSync(file, 'one\r\ntwo\nthree\n');
    expect(await tailFile(file, 2)).toMatchObject({ lines: ['two', 'three'], truncated: true });
    expect(await tailFile(file, 10)).toMatchObject({ lines: ['one', 'two', 'three'], truncated: false });
  });

  it('drops terminal escapes and control characters, keeps tabs', async () => {
    const file = path.join(dir, 'b.log');
    writeFileSync(file, '\x1b[2J\x1b[1;1Hboot\tok\x07\n');
    expect((await tailFile(file, 5)).lines).toEqual(['boot\tok']);
  });

  it('reads only the end of a large log, without its cut first line', async () => {
    const file = path.join(dir, 'c.log');
    const line = 'x'.repeat(99);
    writeFileSync(file, `${Array.from({ length: 5000 }, (_, i) => `${i} ${line}`).join('\n')}\n`);
    const tail = await tailFile(file, 1000);
    expect(tail.lines).toHaveLength(1000);
    expect(tail.lines.at(-1)).toBe(`4999 ${line}`);
    expect(tail.truncated).toBe(true);
  });

  it('a missing file is no lines', async () => {
    expect(await tailFile(path.join(dir, 'none.log'), 5)).toEqual({ lines: [], truncated: false, updatedAt: null });
  });
});
