/**
 * app/keeper.ts as its callers use it: a server started through its keeper while nothing else keeps the event
 * loop open (the state of vitest's globalSetup, or of a CLI that only starts libvirt). The keeper's pipes are
 * unref'd so it never holds the service open; the start itself must still be awaited to its end.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const exec = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '../..');
const KEEPER = path.join(ROOT, 'app/keeper.ts');

describe('a kept process', () => {
  it('is started and stopped by a caller that has nothing else to wait on', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'volsnap-keeper-'));
    const script = path.join(dir, 'start.mts');
    writeFileSync(
      script,
      [
        `import { startKept } from ${JSON.stringify(KEEPER)};`,
        `const p = await startKept({ command: 'sleep', args: ['30'], logFile: ${JSON.stringify(path.join(dir, 'log'))},`,
        `  stopSignals: [['SIGTERM', 5000]] });`,
        `console.log('started', p.pid > 0);`,
        `await p.stop();`,
        `console.log('stopped');`,
      ].join('\n'),
    );
    // Before the fix the awaited start left the loop empty: node exited 13 (unsettled top-level await).
    const { stdout } = await exec(process.execPath, ['--import', 'tsx', script], { cwd: ROOT, timeout: 60_000 });
    expect(stdout.trim().split('\n')).toEqual(['started true', 'stopped']);
  });
});
