import type { Context } from 'hono';
import { streamSSE, type SSEStreamingApi } from 'hono/streaming';
import type { EventRow } from '../../../services/events.js';
import { canSee, type SnapshotProgress } from '../../../services/events.js';
import { forCaller } from '../../redact.js';
import type { AppBindings } from '../../types.js';
import type { Caller } from '../../../services/caller.js';

const PROGRESS_INTERVAL_MS = 1000;
const KEEPALIVE_INTERVAL_MS = 15_000;
const BACKFILL_PAGE = 500;
const DEDUPE_WINDOW = 5000;

/**
 * The SSE stream of one caller: replays events after `since`, then pushes every new visible event (from the
 * process's shared LISTEN connection) and, about once a second, the progress of the caller's in-flight backups.
 */
export function streamEvents(c: Context<AppBindings>, since: number | undefined, onClose: () => void = () => {}): Response {
  const { services, caller, log } = c.var;
  return streamSSE(
    c,
    async (stream) => {
      const pending: EventRow[] = [];
      let wake: (() => void) | null = null;
      const poke = () => {
        const w = wake;
        wake = null;
        w?.();
      };
      let resync = false;
      const subscription = services.eventBus.subscribe({
        onEvent: (e) => {
          if (!canSee(caller, e)) return;
          pending.push(e);
          poke();
        },
        onReset: () => {
          resync = true;
          poke();
        },
      });
      stream.onAbort(() => {
        subscription.unsubscribe();
        onClose();
        poke();
      });
      try {
        await subscription.ready;
        const sender = eventSender(stream, since, caller);
        const backfill = async () => {
          for (;;) {
            if (sender.cursor() === undefined) return;
            const page = await services.events.list(caller, { since: sender.cursor(), limit: BACKFILL_PAGE });
            for (const e of page) await sender.send(e);
            if (page.length < BACKFILL_PAGE) return;
          }
        };
        await backfill();
        await stream.writeSSE({ event: 'ready', data: JSON.stringify({ lastEventId: sender.cursor() ?? null }) });

        const progress = progressTracker(stream);
        let nextProgress = 0;
        let nextKeepalive = Date.now() + KEEPALIVE_INTERVAL_MS;
        while (!stream.aborted && !stream.closed) {
          if (resync) {
            resync = false;
            await backfill();
          }
          while (pending.length) await sender.send(pending.shift()!);
          const now = Date.now();
          if (now >= nextProgress) {
            await progress.update(await services.events.progress(caller));
            nextProgress = now + PROGRESS_INTERVAL_MS;
          }
          if (now >= nextKeepalive) {
            await stream.write(': keepalive\n\n');
            nextKeepalive = now + KEEPALIVE_INTERVAL_MS;
          }
          if (pending.length || resync || stream.aborted) continue;
          await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, Math.max(10, nextProgress - Date.now()));
            wake = () => {
              clearTimeout(timer);
              resolve();
            };
          });
        }
      } finally {
        subscription.unsubscribe();
        onClose();
      }
    },
    async (err) => {
      log.error({ err }, 'event stream failed');
    },
  );
}

/** Writes audit events once each, tracking the last id for resumption. */
function eventSender(stream: SSEStreamingApi, since: number | undefined, caller: Caller) {
  let cursor = since;
  const sent = new Set<number>();
  return {
    cursor: () => cursor,
    async send(e: EventRow) {
      if (sent.has(e.id) || (since !== undefined && e.id <= since)) return;
      sent.add(e.id);
      if (sent.size > DEDUPE_WINDOW) for (const id of [...sent].slice(0, DEDUPE_WINDOW / 2)) sent.delete(id);
      cursor = cursor === undefined ? e.id : Math.max(cursor, e.id);
      await stream.writeSSE({ id: String(e.id), data: JSON.stringify(forCaller(caller, e)) });
    },
  };
}

/** Emits a `progress` message for each in-flight snapshot whose progress (state, attempt, bytes, retry) changed. */
function progressTracker(stream: SSEStreamingApi) {
  let last = new Map<string, string>();
  return {
    async update(current: SnapshotProgress[]) {
      const next = new Map<string, string>();
      for (const p of current) {
        const key = JSON.stringify(p);
        next.set(p.snapshotId, key);
        if (last.get(p.snapshotId) !== key) await stream.writeSSE({ event: 'progress', data: JSON.stringify(p) });
      }
      last = next;
    },
  };
}
