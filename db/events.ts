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
  const { rows } = await db.query<{ id: number }>(
    `INSERT INTO events (type, level, account_id, resource_type, resource_id, description, details)
     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id`,
    [e.type, e.level ?? 'INFO', e.accountId, e.resourceType, e.resourceId, e.description, JSON.stringify(e.details ?? {})],
  );
  const id = rows[0]!.id;
  await db.query('SELECT pg_notify($1, $2)', [EVENTS_CHANNEL, String(id)]);
  return id;
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
