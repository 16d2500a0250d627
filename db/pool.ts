import pg from 'pg';

export type Pool = pg.Pool;
export type PoolClient = pg.PoolClient;

// bigint columns (sizes, byte counts) come back as JS numbers: they stay far below 2^53.
pg.types.setTypeParser(pg.types.builtins.INT8, (v) => Number(v));

/** A connection pool to the database at `url`. */
export function createPool(url: string, max = 10): Pool {
  return new pg.Pool({ connectionString: url, max });
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
