import type pg from 'pg';
import type { Queryable } from './pool.js';

/** The channel on which every new event id is announced (LISTEN/NOTIFY), for the SSE stream. */
export const EVENTS_CHANNEL = 'volsnap_events';

export type EventLevel = 'INFO' | 'WARN' | 'ERROR';

export interface NewEvent {
  type: string;
  level?: EventLevel;
  accountId: string | null;
  resourceType: 'Snapshot' | 'VirtualMachine' | 'Volume' | 'Configuration' | 'Account' | 'Storage';
  resourceId: string;
  description: string;
  details?: Record<string, unknown>;
}

export interface EventRow {
  id: number;
  type: string;
  level: EventLevel;
  accountId: string | null;
  resourceType: string;
  resourceId: string;
  description: string;
  details: Record<string, unknown>;
  createdAt: string;
}

/** Records a CloudStack-style audit/notification event and announces it; runs inside the caller's transaction. */
export async function recordEvent(db: Queryable, e: NewEvent): Promise<number> {
  // One statement (one round trip): the NOTIFY is delivered at COMMIT either way.
  const { rows } = await db.query<{ id: number }>(
    `WITH ins AS (
       INSERT INTO events (type, level, account_id, resource_type, resource_id, description, details)
       VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id
     )
     SELECT id, pg_notify($8, id::text) FROM ins`,
    [e.type, e.level ?? 'INFO', e.accountId, e.resourceType, e.resourceId, e.description, JSON.stringify(e.details ?? {}), EVENTS_CHANNEL],
  );
  return rows[0]!.id;
}

/** Maps an `events` row to its API shape. */
export function toEventRow(r: Record<string, unknown>): EventRow {
  return {
    id: Number(r.id),
    type: String(r.type),
    level: r.level as EventLevel,
    accountId: (r.account_id as string | null) ?? null,
    resourceType: String(r.resource_type),
    resourceId: String(r.resource_id),
    description: String(r.description),
    details: (r.details as Record<string, unknown>) ?? {},
    createdAt: new Date(r.created as string).toISOString(),
  };
}

/** One event by id, if it exists. */
export async function findEvent(db: Queryable, id: number): Promise<EventRow | undefined> {
  const { rows } = await db.query('SELECT * FROM events WHERE id = $1', [id]);
  return rows[0] ? toEventRow(rows[0]) : undefined;
}

/** Events after id `since` (exclusive) visible to `ownerId` (null: every account), oldest first, at most `limit`. */
export async function listEventsAfter(db: Queryable, since: number, ownerId: string | null, limit: number): Promise<EventRow[]> {
  const { rows } = await db.query(
    `SELECT * FROM events WHERE id > $1 AND ($2::uuid IS NULL OR account_id = $2) ORDER BY id LIMIT $3`,
    [since, ownerId, limit],
  );
  return rows.map(toEventRow);
}

/** Subscribes a dedicated connection (LISTEN holds for its session, so never a pooled one) to EVENTS_CHANNEL. */
export async function listenForEvents(client: Pick<pg.Client, 'query'>): Promise<void> {
  await client.query(`LISTEN ${EVENTS_CHANNEL}`);
}
