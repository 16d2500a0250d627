import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CommandError, run, spawnHelperPid, useSpawnHelper } from '../../storage/exec.js';

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** Gone or a zombie (its new parent may never reap it): no longer running. */
const running = (pid: number): boolean => {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
};

/** What run() promises whichever way the command is started. */
function commonBehaviour(): void {
  it('streams stdout as it comes, collects it, and reports a failure with exit code and stderr', async () => {
    const chunks: string[] = [];
    const ok = await run('sh', ['-c', 'printf one; sleep 0.2; printf two; printf warn >&2'], { onStdout: (c) => chunks.push(c) });
    expect(ok).toEqual({ stdout: 'onetwo', stderr: 'warn' });
    expect(chunks.join('')).toBe('onetwo');
    expect(chunks.length).toBeGreaterThanOrEqual(2);

    const err = await run('sh', ['-c', 'echo "bad thing" >&2; exit 3']).catch((e) => e);
    expect(err).toBeInstanceOf(CommandError);
    expect(err).toMatchObject({ exitCode: 3, stderr: 'bad thing', command: 'sh -c echo "bad thing" >&2; exit 3' });
    expect(err.message).toMatch(/exited with code 3: bad thing$/);
  });

  it('names the binary when it cannot be started', async () => {
    await expect(run('/nonexistent/qemu-img', ['info'])).rejects.toThrow(/\/nonexistent\/qemu-img.*ENOENT/);
  });

  it('abort kills the command and rejects once it has exited', async () => {
    const ac = new AbortController();
    let pid = 0;
    const running = run('sh', ['-c', 'echo $$; exec sleep 30'], { signal: ac.signal, onStdout: (c) => (pid = Number(c.trim())) });
    await expect.poll(() => pid).toBeGreaterThan(0);
    ac.abort();
    const err = await running.catch((e) => e);
    expect(err.name).toBe('AbortError');
    expect(alive(pid)).toBe(false);
    await expect(run('true', [], { signal: ac.signal })).rejects.toMatchObject({ name: 'AbortError' });
  });
}

/** storage/exec.ts run(): commands start in the spawn helper, never forked from the service process itself. */
describe('run() through the spawn helper', () => {
  commonBehaviour();

  it('starts commands as children of the helper, not of this process', async () => {
    const helperPid = spawnHelperPid();
    expect(helperPid).toBeGreaterThan(0);
    expect(helperPid).not.toBe(process.pid);
    const { stdout } = await run('sh', ['-c', 'echo $PPID']);
    expect(Number(stdout.trim())).toBe(helperPid);
  });

  it('a helper that dies fails its commands clearly; the next command gets a new helper', async () => {
    const first = spawnHelperPid()!;
    const running = run('sleep', ['30']);
    await new Promise((r) => setTimeout(r, 100));
    process.kill(first, 'SIGKILL');
    await expect(running).rejects.toThrow(/sleep 30 failed: the spawn helper exited/);
    const { stdout } = await run('sh', ['-c', 'echo $PPID']);
    const second = Number(stdout.trim());
    expect(second).not.toBe(first);
    expect(second).toBe(spawnHelperPid());
  });

  it('a helper killed outright takes the commands it started with it (none is left orphaned)', async () => {
    const helperPid = spawnHelperPid()!;
    let said!: (pid: number) => void;
    const pid = new Promise<number>((r) => (said = r));
    // A long command, as a persistent `qemu-nbd -t` is: it says its pid, then waits.
    const long = run('sh', ['-c', 'echo $$; exec sleep 300'], { onStdout: (c) => said(Number(c.trim())) });
    const child = await pid;
    expect(running(child)).toBe(true);
    process.kill(helperPid, 'SIGKILL');
    await expect(long).rejects.toThrow(/failed: the spawn helper exited/);
    for (let i = 0; running(child) && i < 500; i++) await new Promise((r) => setTimeout(r, 10));
    expect(running(child), `command ${child} still running after its helper died`).toBe(false);
  });
});

/** The fallback when the helper cannot start: execFile from this process, with the same contract. */
describe('run() without the spawn helper', () => {
  beforeAll(() => useSpawnHelper(false));
  afterAll(() => useSpawnHelper(true));
  commonBehaviour();

  it('forks the command from this process', async () => {
    const { stdout } = await run('sh', ['-c', 'echo $PPID']);
    expect(Number(stdout.trim())).toBe(process.pid);
  });
});
