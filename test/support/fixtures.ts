import { randomBytes, randomUUID } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { Pool } from '../../db/pool.js';
import { sha256File as sha256Hex } from '../../storage/common.js';
import type { StorageDriver } from '../../storage/driver.js';

const exec = promisify(execFile);

/** Inserts an account and returns its id (the API issue adds keys; core tests only need the row). */
export async function insertAccount(pool: Pool, name = `acct-${randomUUID().slice(0, 8)}`): Promise<string> {
  const id = randomUUID();
  await pool.query(`INSERT INTO accounts (id, name, role, api_key_hash) VALUES ($1, $2, 'user', $3)`, [
    id,
    name,
    randomBytes(16).toString('hex'),
  ]);
  return id;
}

/** Creates a real qcow2 volume in the first KVM pool and its row; optionally attached to a new VM. */
export async function insertVolume(
  pool: Pool,
  driver: StorageDriver,
  opts: { accountId: string; sizeBytes?: number; type?: 'ROOT' | 'DATADISK'; withVm?: boolean },
): Promise<{ volumeId: string; vmId: string | null; path: string }> {
  const { rows } = await pool.query(`SELECT id, path FROM storage_pools WHERE hypervisor = 'KVM' ORDER BY name LIMIT 1`);
  const storagePool = rows[0];
  let vmId: string | null = null;
  if (opts.withVm) {
    vmId = randomUUID();
    await pool.query(
      `INSERT INTO virtual_machines (id, account_id, name, hypervisor, state) VALUES ($1, $2, $3, 'KVM', 'Running')`,
      [vmId, opts.accountId, `vm-${vmId.slice(0, 8)}`],
    );
  }
  const volumeId = randomUUID();
  const sizeBytes = opts.sizeBytes ?? 64 * 1024 * 1024;
  const created = await driver.createVolume(storagePool.path, volumeId, sizeBytes);
  await pool.query(
    `INSERT INTO volumes (id, account_id, vm_id, name, type, hypervisor, size_bytes, pool_id, path, format, state)
     VALUES ($1, $2, $3, $4, $5, 'KVM', $6, $7, $8, 'qcow2', 'Ready')`,
    [volumeId, opts.accountId, vmId, `vol-${volumeId.slice(0, 8)}`, opts.type ?? 'ROOT', sizeBytes, storagePool.id, created.path],
  );
  return { volumeId, vmId, path: created.path };
}

/** Writes `pattern` over [offset, offset+length) of an image with qemu-io. */
export async function writePattern(image: string, pattern: number, offset: number, length: number): Promise<void> {
  await exec('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x${pattern.toString(16)} ${offset} ${length}`, image]);
}

/** Whether [offset, offset+length) of an image holds `pattern` (qemu-io's own pattern check). */
export async function holdsPattern(image: string, pattern: number, offset: number, length: number): Promise<boolean> {
  const { stdout } = await exec('qemu-io', ['-r', '-f', 'qcow2', '-c', `read -P 0x${pattern.toString(16)} ${offset} ${length}`, image]).catch(
    (e) => ({ stdout: String(e.stdout ?? '') + 'Pattern verification failed' }),
  );
  return !/Pattern verification failed/.test(stdout);
}

/** `sha256:<hex>` of a file. */
export async function sha256File(path: string): Promise<string> {
  return `sha256:${await sha256Hex(path)}`;
}

/** Polls `probe` until it returns a value that is not undefined, or fails after `timeoutMs`. */
export async function eventually<T>(probe: () => Promise<T | undefined>, timeoutMs = 60_000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
