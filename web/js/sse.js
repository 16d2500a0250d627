/**
 * The live event stream, GET /api/v1/events/stream. The API authenticates only with the Authorization header,
 * which EventSource cannot send, so this reads the server-sent events with fetch() and a stream reader. It
 * reconnects with backoff and resumes with Last-Event-ID, so no event is missed across a reconnect.
 */

const STALL_MS = 45_000; // the server sends a keepalive every 15 s

export function connectEventStream({ key, onEvent, onProgress, onReady, onStatus, onUnauthorized }) {
  let lastEventId;
  let stopped = false;
  let controller;
  let delay = 1000;

  const dispatch = (msg) => {
    if (msg.id !== undefined) lastEventId = msg.id;
    let data;
    try {
      data = msg.data ? JSON.parse(msg.data) : undefined;
    } catch {
      return;
    }
    if (msg.event === 'progress') onProgress(data);
    else if (msg.event === 'ready') onReady(data);
    else if (msg.event === 'message' && data) onEvent(data);
  };

  (async () => {
    while (!stopped) {
      controller = new AbortController();
      let stallTimer;
      const armStall = () => {
        clearTimeout(stallTimer);
        stallTimer = setTimeout(() => controller.abort(), STALL_MS);
      };
      try {
        const headers = { Authorization: `Bearer ${key}`, Accept: 'text/event-stream' };
        if (lastEventId !== undefined) headers['Last-Event-ID'] = lastEventId;
        armStall();
        const res = await fetch('/api/v1/events/stream', { headers, cache: 'no-store', signal: controller.signal });
        if (res.status === 401) {
          clearTimeout(stallTimer);
          onUnauthorized();
          return;
        }
        if (!res.ok || !res.body) throw new Error(`event stream answered HTTP ${res.status}`);
        onStatus('live');
        delay = 1000;
        await readEvents(res.body, dispatch, armStall);
      } catch {
        // network error, stall or abort: reconnect below unless stopped
      } finally {
        clearTimeout(stallTimer);
      }
      if (stopped) return;
      onStatus('reconnecting');
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 15_000);
    }
  })();

  return {
    close() {
      stopped = true;
      controller?.abort();
    },
  };
}

/** Parses a text/event-stream body (the WHATWG format): `event`, `data` (multi-line), `id`; `:` comments. */
async function readEvents(body, dispatch, onBytes) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let msg = { event: 'message', data: [], id: undefined };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    onBytes();
    buffer += value;
    // A chunk may end between the \r and \n of one line break: hold a trailing \r back.
    const hold = buffer.endsWith('\r') ? '\r' : '';
    const lines = (hold ? buffer.slice(0, -1) : buffer).split(/\r\n|\r|\n/);
    buffer = (lines.pop() ?? '') + hold;
    for (const line of lines) {
      if (line === '') {
        if (msg.data.length || msg.event !== 'message') dispatch({ event: msg.event, data: msg.data.join('\n'), id: msg.id });
        else if (msg.id !== undefined) dispatch({ event: 'message', data: '', id: msg.id });
        msg = { event: 'message', data: [], id: undefined };
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon === -1 ? line : line.slice(0, colon);
      let val = colon === -1 ? '' : line.slice(colon + 1);
      if (val.startsWith(' ')) val = val.slice(1);
      if (field === 'event') msg.event = val || 'message';
      else if (field === 'data') msg.data.push(val);
      else if (field === 'id' && !val.includes('\0')) msg.id = val;
    }
  }
}
