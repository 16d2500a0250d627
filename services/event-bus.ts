import pg from 'pg';
import type { Logger } from 'pino';
import { findEvent, listenForEvents, type EventRow } from '../db/events.js';
import type { Pool } from '../db/pool.js';

/** Receives every new event; `onReset` after the listener reconnected (events may have been missed meanwhile). */
export interface EventSubscriber {
  onEvent(event: EventRow): void;
  onReset?(): void;
}

export interface EventBus {
  /**
   * Starts delivering new events to `subscriber`. `ready` resolves once the LISTEN is in place: events committed
   * after that are delivered (read anything older from the table).
   */
  subscribe(subscriber: EventSubscriber): { ready: Promise<void>; unsubscribe(): void };
  /** Number of subscribers (for tests and metrics). */
  size(): number;
  close(): Promise<void>;
}

const RECONNECT_MS = 1000;

/**
 * One PostgreSQL LISTEN connection per process, fanning new events out to every open stream. It connects on the
 * first subscriber and disconnects after the last one leaves, so an idle process holds no extra connection.
 * The connection is a dedicated client (LISTEN needs one session), not one borrowed from the pool.
 */
export function createEventBus(pool: Pool, logger: Logger): EventBus {
  const subscribers = new Set<EventSubscriber>();
  let client: pg.Client | null = null;
  let connecting: Promise<void> | null = null;
  let closed = false;

  async function deliver(id: number): Promise<void> {
    const event = await findEvent(pool, id);
    if (!event) return;
    for (const s of subscribers) {
      try {
        s.onEvent(event);
      } catch (err) {
        logger.warn({ err }, 'event subscriber failed');
      }
    }
  }

  function connect(reset: boolean): Promise<void> {
    connecting ??= (async () => {
      const c = new pg.Client(pool.options);
      c.on('notification', (msg) => {
        const id = Number(msg.payload);
        if (Number.isSafeInteger(id)) deliver(id).catch((err) => logger.warn({ err, eventId: id }, 'fetching a notified event failed'));
      });
      c.on('error', (err) => {
        logger.warn({ err }, 'event listener connection failed; reconnecting');
        drop(c);
      });
      c.on('end', () => drop(c));
      try {
        await c.connect();
        await listenForEvents(c);
      } catch (err) {
        logger.warn({ err }, 'event listener could not connect; retrying');
        await c.end().catch(() => undefined);
        connecting = null;
        scheduleReconnect();
        return;
      }
      client = c;
      connecting = null;
      if (subscribers.size === 0) await disconnect();
      else if (reset) for (const s of subscribers) s.onReset?.();
    })();
    return connecting;
  }

  function scheduleReconnect(): void {
    if (closed || subscribers.size === 0) return;
    setTimeout(() => void connect(true), RECONNECT_MS).unref();
  }

  function drop(c: pg.Client): void {
    if (client !== c) return;
    client = null;
    scheduleReconnect();
  }

  async function disconnect(): Promise<void> {
    const c = client;
    client = null;
    await c?.end().catch(() => undefined);
  }

  return {
    subscribe(subscriber) {
      if (closed) throw new Error('event bus is closed');
      subscribers.add(subscriber);
      const ready = client ? Promise.resolve() : connect(false);
      return {
        ready,
        unsubscribe() {
          subscribers.delete(subscriber);
          if (subscribers.size === 0 && client) void disconnect();
        },
      };
    },
    size: () => subscribers.size,
    async close() {
      closed = true;
      subscribers.clear();
      await connecting;
      await disconnect();
    },
  };
}
