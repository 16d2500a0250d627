/**
 * A tiny element builder. Text is always set as text nodes (never parsed as HTML), so user data cannot inject
 * markup. Props: `class`, `dataset`, `on<event>` handlers, `value`/`checked` (set as properties after the
 * children, so a <select> gets its options first), booleans as present/absent attributes, the rest as attributes.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  let value;
  for (const [key, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (key === 'class') el.className = Array.isArray(v) ? v.filter(Boolean).join(' ') : v;
    else if (key === 'dataset') Object.assign(el.dataset, v);
    else if (key === 'value') value = v;
    else if (key === 'checked') el.checked = Boolean(v);
    else if (key.startsWith('on') && typeof v === 'function') el.addEventListener(key.slice(2), v);
    else el.setAttribute(key, v === true ? '' : String(v));
  }
  append(el, children);
  if (value !== undefined) el.value = String(value);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** `document.getElementById`, failing loudly when the page lacks the element. */
export function byId(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing element #${id}`);
  return el;
}

/**
 * Replaces `oldEl` with `newEl` keeping what the user was doing: the focused control and the values of
 * inputs/selects are carried over by their `data-key`.
 */
export function replacePreserving(oldEl, newEl) {
  const active = document.activeElement;
  const focusKey = active && oldEl.contains(active) ? active.dataset.key : undefined;
  const values = new Map();
  for (const input of oldEl.querySelectorAll('select[data-key], input[data-key]')) values.set(input.dataset.key, input.value);
  oldEl.replaceWith(newEl);
  for (const input of newEl.querySelectorAll('select[data-key], input[data-key]')) {
    const v = values.get(input.dataset.key);
    if (v !== undefined && (input.tagName !== 'SELECT' || [...input.options].some((o) => o.value === v))) input.value = v;
  }
  if (focusKey !== undefined) {
    const target = newEl.querySelector(`[data-key="${CSS.escape(focusKey)}"]`);
    if (target && !target.disabled) target.focus();
    else if (target) focusNearest(newEl);
  }
}

/** Moves focus to a container's heading when the focused control went away. */
export function focusNearest(container) {
  const heading = container.querySelector('[tabindex="-1"]') ?? container.closest('section')?.querySelector('h2');
  if (heading instanceof HTMLElement) {
    if (!heading.hasAttribute('tabindex')) heading.setAttribute('tabindex', '-1');
    heading.focus();
  }
}

/** Short random id (works outside secure contexts, unlike crypto.randomUUID). */
export function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}
