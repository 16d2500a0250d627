import pg from 'pg';

export type Pool = pg.Pool;
export type PoolClient = pg.PoolClient;

// bigint columns (sizes, byte counts) come back as JS numbers: they stay far below 2^53.
pg.types.setTypeParser(pg.types.builtins.INT8, (v) => Number(v));

/**
 * A connection pool to the database at `url`. Its `end()` resolves once every connection has closed: pg's own
 * resolves when it has only asked them to, so a server stopped right after (embedded PostgreSQL at shutdown)
 * would still find sessions to terminate, and their FATAL would reach a pool with nobody listening.
 */
export function createPool(url: string, max = 10): Pool {
  const pool = new pg.Pool({ connectionString: url, max });
  const open = new Set<Promise<void>>();
  pool.on('connect', (client) => {
    const closed = new Promise<void>((resolve) => client.once('end', () => resolve()));
    open.add(closed);
    void closed.then(() => open.delete(closed));
  });
  const end = pool.end.bind(pool) as () => Promise<void>;
  pool.end = (async () => {
    await end();
    await Promise.all([...open]);
  }) as Pool['end'];
  return pool;
}

/** Runs `fn` in a transaction; rolls back on any error, so no request can leave data half-written. */
export async function withTransaction<T>(pool: Pool, fn: (client: PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}

/** Anything that can run a query: the pool itself or a client inside a transaction. */
export type Queryable = Pick<pg.Pool, 'query'> | Pick<pg.PoolClient, 'query'>;

/** Whether the database answers a trivial query (the health check). */
export function ping(db: Queryable): Promise<boolean> {
  return db.query('SELECT 1').then(() => true, () => false);
}
