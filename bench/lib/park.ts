/**
 * Parking the background backups of async snapshots, as P1 does (bench/p1-time-to-created.ts), so that a phase
 * measures time-to-created and not backups: the image store path is made unusable (a path under a regular file)
 * and backup.max.attempts=2 / backup.retry.interval=3600, so each snapshot's first backup attempt fails at once
 * (mkdir: ENOTDIR, error recorded, no copy) and the second waits an hour in BackingUp.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Pool } from 'pg';
import type { BenchContext } from '../context.js';

/** Parks backups; returns the function that restores the image store paths and both settings as they were. */
export async function parkBackups(ctx: BenchContext, blockerName: string): Promise<() => Promise<void>> {
  const { stack, admin } = ctx;
  const settingNames = ['backup.max.attempts', 'backup.retry.interval'] as const;
  const { rows: before } = await stack.pool.query<{ name: string; value: string }>('SELECT name, value FROM configuration WHERE name = ANY($1::text[])', [settingNames]);
  const { rows: stores } = await stack.pool.query<{ id: string; path: string }>('SELECT id, path FROM image_stores');
  await admin.expect([200], 'PUT', '/api/v1/configurations/backup.max.attempts', { value: 2 });
  await admin.expect([200], 'PUT', '/api/v1/configurations/backup.retry.interval', { value: 3600 });
  const blocker = join(ctx.scratchDir, blockerName);
  writeFileSync(blocker, 'backups cannot be written under a regular file\n');
  await stack.pool.query('UPDATE image_stores SET path = $1', [join(blocker, 'x')]);
  return async () => {
    for (const s of stores) await stack.pool.query('UPDATE image_stores SET path = $1 WHERE id = $2', [s.path, s.id]);
    const defaults = { 'backup.max.attempts': 3, 'backup.retry.interval': 300 };
    for (const name of settingNames) {
      const value = Number(before.find((r) => r.name === name)?.value ?? defaults[name]);
      await admin.expect([200], 'PUT', `/api/v1/configurations/${name}`, { value });
    }
  };
}

/**
 * Waits for snapshots to park (BackingUp with the first attempt's error recorded). One poller for every waiter
 * (a single query per tick, whatever the number of clients), running only while someone waits, so that the
 * bench's own database load does not grow with the number of clients.
 */
export class ParkWatcher {
  private readonly waiters = new Map<string, { resolve(): void; reject(err: Error): void; deadline: number }>();
  private timer: NodeJS.Timeout | null = null;
  private polling = false;
  /** Poll queries issued (the bench's own load on PostgreSQL). */
  queries = 0;

  constructor(
    private readonly pool: Pool,
    private readonly everyMs = 10,
    private readonly timeoutMs = 60_000,
  ) {}

  parked(snapshotId: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.waiters.set(snapshotId, { resolve, reject, deadline: Date.now() + this.timeoutMs });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.timer || this.polling || this.waiters.size === 0) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.poll();
    }, this.everyMs);
  }

  private async poll(): Promise<void> {
    this.polling = true;
    try {
      const ids = [...this.waiters.keys()];
      this.queries++;
      const { rows } = await this.pool.query<{ id: string }>(
        `SELECT id FROM snapshots WHERE id = ANY($1::uuid[]) AND status = 'BackingUp' AND last_error IS NOT NULL`,
        [ids],
      );
      for (const r of rows) {
        this.waiters.get(r.id)?.resolve();
        this.waiters.delete(r.id);
      }
      const now = Date.now();
      for (const [id, w] of this.waiters) {
        if (now > w.deadline) {
          w.reject(new Error(`timed out after ${this.timeoutMs} ms waiting for snapshot ${id} to park`));
          this.waiters.delete(id);
        }
      }
    } catch (err) {
      for (const w of this.waiters.values()) w.reject(err instanceof Error ? err : new Error(String(err)));
      this.waiters.clear();
    } finally {
      this.polling = false;
      this.schedule();
    }
  }
}
