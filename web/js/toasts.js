import { byId, h } from './dom.js';

/**
 * Notifications in one polite live region (role=status, named "Notifications"). Each has a key so the same
 * news (say, "created on primary", heard from both the POST answer and the event stream) shows once.
 */

const shown = new Set();
// Short: the news is also on the page (the snapshot's row, its detail); errors stay until dismissed.
const TTL = { info: 5000, success: 5000, warning: 8000 };

/**
 * The page keeps room below its content for the notifications (--toasts-height on the root): whatever they
 * cover at the bottom (the detail's copies table) can be scrolled above them.
 */
function keepRoomForToasts(region) {
  if (region.dataset.observed) return;
  region.dataset.observed = 'true';
  new ResizeObserver(() => document.documentElement.style.setProperty('--toasts-height', `${region.offsetHeight}px`)).observe(region);
}

export function toast(message, { kind = 'info', key, detail } = {}) {
  if (key !== undefined) {
    if (shown.has(key)) return;
    shown.add(key);
  }
  const region = byId('toasts');
  keepRoomForToasts(region);
  const close = () => item.remove();
  const item = h(
    'div',
    { class: ['toast', `toast-${kind}`] },
    // Long messages are clamped on screen (the title and the live region keep the whole text).
    h(
      'div',
      { class: 'toast-body' },
      h('p', { class: 'toast-text' }, kind === 'error' ? h('strong', {}, 'Error: ') : null, message),
      // The API's whole message, never cut: one click away.
      detail ? h('details', { class: 'toast-detail' }, h('summary', {}, 'Details'), h('p', {}, detail)) : null,
    ),
    h('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss notification', onclick: close }, '×'),
  );
  region.append(item);
  // Errors stay until dismissed; the rest fade after a while (keep at most a handful on screen).
  const ttl = TTL[kind];
  if (ttl) setTimeout(close, ttl);
  const items = region.querySelectorAll('.toast');
  if (items.length > 6) items[0].remove();
}

/** Forget the keys (on sign-out), so a new session hears its own news. */
export function resetToasts() {
  shown.clear();
  byId('toasts').replaceChildren();
}
