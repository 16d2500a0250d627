import { createServer } from 'node:net';

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

/** Whether 127.0.0.1:port can be bound now. */
function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/**
 * A free port in [low, high], tried at random. The Temporal server stores its roles' ports in PostgreSQL as
 * `smallint` (cluster_membership.rpc_port), so a port from the kernel's ephemeral range (32768 and up) makes a
 * role fail at start-up ("value ... is out of range for type smallint"): the cluster tier takes its ports here.
 */
export async function freePortBetween(low: number, high: number, taken: Set<number> = new Set()): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = low + Math.floor(Math.random() * (high - low + 1));
    if (taken.has(port)) continue;
    if (await bindable(port)) {
      taken.add(port);
      return port;
    }
  }
  throw new Error(`no free port between ${low} and ${high}`);
}

const RESTARTABLE_LOW = 10_000;
const RESTARTABLE_BAND = 1_500;
const restartableTaken = new Set<number>();

/**
 * A port for a server that a test stops and starts again on the same port (a service restart, a fault). It
 * lies below the kernel's ephemeral range, so no other process's `listen(0)` or outgoing connection can be handed
 * it while the server is down (a `freePort()` port can be, and the restart then finds it "in use by another
 * process"), and in a band of its own per vitest worker, so tests running side by side never pick the same one.
 */
export function restartablePort(): Promise<number> {
  const worker = Number(process.env.VITEST_POOL_ID ?? process.env.VITEST_WORKER_ID ?? 0) % 6;
  const low = RESTARTABLE_LOW + worker * RESTARTABLE_BAND;
  return freePortBetween(low, low + RESTARTABLE_BAND - 1, restartableTaken);
}
