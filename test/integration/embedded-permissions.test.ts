import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ensureTraversableByOthers, startEmbeddedPostgres } from '../../db/embedded.js';
import { freePort } from '../../harness/ports.js';

const mode = (p: string) => statSync(p).mode & 0o777;

/**
 * As root, embedded PostgreSQL runs as the `postgres` user, which must reach its files. volsnap grants search
 * permission inside its data dir only; a directory outside that blocks the way is reported, not changed.
 */
describe.skipIf(process.getuid?.() !== 0)('embedded PostgreSQL as root: nothing outside the data dir is changed', () => {
  const made: string[] = [];
  const tempParent = () => {
    const dir = mkdtempSync(join(tmpdir(), 'volsnap-perm-')); // mode 0700, as mkdtemp makes it
    made.push(dir);
    return dir;
  };
  afterEach(() => {
    for (const d of made.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  it('a data dir under a private parent: start-up refused, saying what to do; the parent keeps its mode, nothing is created', async () => {
    const parent = tempParent();
    expect(mode(parent)).toBe(0o700);
    const dataDir = join(parent, 'data');
    const err = await startEmbeddedPostgres(join(dataDir, 'postgres'), await freePort(), undefined, { ownedRoot: dataDir }).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toContain(`${parent} gives others no search permission`);
    expect(err?.message).toContain(`chmod o+x ${parent}`);
    expect(err?.message).toMatch(/volsnap changes nothing outside its data dir/);
    expect(mode(parent)).toBe(0o700);
    expect(existsSync(dataDir)).toBe(false);
  });

  it('inside the data dir, a directory without search permission is given it (o+x only)', () => {
    const parent = tempParent();
    chmodSync(parent, 0o755);
    const dataDir = join(parent, 'data');
    mkdirSync(join(dataDir, 'postgres'), { recursive: true });
    chmodSync(dataDir, 0o700);
    chmodSync(join(dataDir, 'postgres'), 0o700);
    expect(ensureTraversableByOthers(join(dataDir, 'postgres'), dataDir)).toEqual([join(dataDir, 'postgres'), dataDir]);
    expect(mode(dataDir)).toBe(0o701);
    expect(mode(join(dataDir, 'postgres'))).toBe(0o701);
    expect(mode(parent)).toBe(0o755);
  });
});
