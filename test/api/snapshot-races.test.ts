/**
 * Races around one snapshot's life. The seed's parallel operation "snapshot on the same volume": rounds of 16 asyncBackup snapshots of one data
 * disk requested at once, with one backup attempt allowed. A backup that read the image while another snapshot
 * was written into its snapshot table used to fail ("not found") and, on its last attempt, compensate away a
 * snapshot that had answered "created".
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MiB, startApiHarness, waitFor, type ApiHarness } from './harness.js';

const exec = promisify(execFile);
const ROUNDS = 4;
const PER_ROUND = 16;

describe('snapshot races over HTTP', () => {
  let h: ApiHarness;
  let key: string;
  let volume: { id: string; path: string };

  beforeAll(async () => {
    h = await startApiHarness();
    key = (await h.createUser('busy')).key;
    await h.setConfig('backup.max.attempts', 1);
    const made = await h.call('POST', '/api/v1/vms', {
      key,
      body: { name: 'db-1', hypervisor: 'KVM', rootDiskSizeBytes: 2 * MiB, dataDisks: [{ sizeBytes: 64 * MiB }] },
    });
    const vm = (await h.call('GET', `/api/v1/vms/${made.body.id}`)).body;
    volume = vm.volumes.find((v: { type: string }) => v.type === 'DATADISK');
    await exec('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 0 16M', volume.path]);
  });
  afterAll(async () => {
    await h?.stop();
  });

  it(`backs up all ${ROUNDS} × ${PER_ROUND} snapshots on their first and only attempt`, async () => {
    const outcomes: string[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const answers = await Promise.all(
        Array.from({ length: PER_ROUND }, (_, i) =>
          h.call('POST', `/api/v1/volumes/${volume.id}/snapshots`, { key, body: { name: `r${round}-${i}`, asyncBackup: true } }),
        ),
      );
      expect(answers.map((a) => a.status)).toEqual(Array(PER_ROUND).fill(201));
      for (const a of answers) {
        const done = await waitFor(async () => {
          const s = (await h.call('GET', `/api/v1/snapshots/${a.body.id}`, { key })).body;
          return s.state === 'BackedUp' || s.state === 'Error' ? s : null;
        }, 120_000, `snapshot ${a.body.id} settled`);
        outcomes.push(`${done.state} after ${done.backup.attempts} attempt(s)${done.backup.lastError ? `: ${done.backup.lastError}` : ''}`);
      }
    }
    expect(outcomes.filter((o) => o !== 'BackedUp after 1 attempt(s)')).toEqual([]);
  });

  it('a retry whose workflow has closed answers the row and never runs the workflow again', async () => {
    const body = { name: 'once', asyncBackup: true };
    const headers = { 'Idempotency-Key': 'closed-run' };
    const first = await h.call('POST', `/api/v1/volumes/${volume.id}/snapshots`, { key, body, headers });
    expect(first.status).toBe(201);
    const handle = h.stack.client.workflow.getHandle(`snapshot-${first.body.id}`);
    await handle.result();
    const { runId } = await handle.describe();
    // A row its closed run left in flight (what the reconciler settles later).
    await h.stack.pool.query(`UPDATE snapshots SET status = 'BackingUp' WHERE id = $1`, [first.body.id]);

    const retry = await h.call('POST', `/api/v1/volumes/${volume.id}/snapshots`, { key, body, headers });
    expect(retry.status).toBe(200);
    expect(retry.body).toMatchObject({ id: first.body.id, state: 'BackingUp' });
    const after = await handle.describe();
    expect(after.runId).toBe(runId);
    expect(after.status.name).toBe('COMPLETED');
  });
});
