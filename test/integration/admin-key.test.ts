/**
 * A generated admin key never reaches a log: started without ADMIN_API_KEY, the service writes the key to a file
 * only its user can read and logs that file's path; every log it and its embedded servers write is searched.
 */
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { restartablePort } from '../../harness/ports.js';
import { spawnService, waitForHttp200, type ServiceProcess } from '../../harness/service-process.js';

/** Every file under `dir`, recursively. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((d) => (d.isDirectory() ? filesUnder(join(dir, d.name)) : [join(dir, d.name)]));
}

describe('the generated admin key (real service process)', () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'volsnap-adminkey-'));
  chmodSync(dataDir, 0o755);
  const stdoutLog = join(dataDir, 'stdout.log');
  let service: ServiceProcess | undefined;

  afterAll(async () => {
    await service?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('is written to a 0600 file in the data dir, works, and appears in no log', async () => {
    const port = await restartablePort();
    const env: Record<string, string> = {
      VOLSNAP_DATA_DIR: dataDir,
      PORT: String(port),
      EMBEDDED_PG_PORT: String(await restartablePort()),
      TEMPORAL_PORT: String(await restartablePort()),
      TEMPORAL_UI_PORT: String(await restartablePort()),
      ADMIN_API_KEY: '',
    };
    service = spawnService('worker/main.ts', env, stdoutLog);
    await waitForHttp200(`http://127.0.0.1:${port}/healthz`, 120_000);

    const keyFile = join(dataDir, 'admin-api-key');
    expect(statSync(keyFile).mode & 0o777).toBe(0o600);
    const key = readFileSync(keyFile, 'utf8').trim();
    expect(key).toMatch(/^vs_/);
    const me = await fetch(`http://127.0.0.1:${port}/api/v1/configurations`, { headers: { authorization: `Bearer ${key}` } });
    expect(me.status).toBe(200);

    // The path is logged, so an operator can find the key.
    expect(readFileSync(stdoutLog, 'utf8')).toContain(keyFile);
    const logs = filesUnder(dataDir).filter((f) => f !== keyFile && /\.log$/.test(f));
    expect(logs).toContain(join(dataDir, 'logs', 'management-server.log'));
    for (const f of logs) expect(readFileSync(f, 'utf8').includes(key), f).toBe(false);
  });
});
