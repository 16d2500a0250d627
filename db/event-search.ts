import { toEventRow, type EventRow } from './events.js';
import type { Queryable } from './pool.js';

export interface EventSearch {
  /** null: every account's events and the global ones (an admin). */
  ownerId: string | null;
  id?: number;
  type?: string;
  level?: string;
  keyword?: string;
  startDate?: Date;
  endDate?: Date;
  limit: number;
  offset: number;
}

/** Events matching a CloudStack listEvents query, newest first, one page; with the total. */
export async function searchEvents(db: Queryable, q: EventSearch): Promise<{ count: number; events: EventRow[] }> {
  const where = `($1::uuid IS NULL OR account_id = $1) AND ($2::bigint IS NULL OR id = $2) AND ($3::text IS NULL OR type = $3)
     AND ($4::text IS NULL OR level = $4) AND ($5::text IS NULL OR description ILIKE '%' || $5 || '%' OR type ILIKE '%' || $5 || '%')
     AND ($6::timestamptz IS NULL OR created >= $6) AND ($7::timestamptz IS NULL OR created <= $7)`;
  const args = [q.ownerId, q.id ?? null, q.type ?? null, q.level ?? null, q.keyword ?? null, q.startDate ?? null, q.endDate ?? null];
  const total = await db.query(`SELECT count(*)::int AS n FROM events WHERE ${where}`, args);
  const { rows } = await db.query(`SELECT * FROM events WHERE ${where} ORDER BY id DESC LIMIT $8 OFFSET $9`, [...args, q.limit, q.offset]);
  return { count: total.rows[0].n, events: rows.map(toEventRow) };
}
