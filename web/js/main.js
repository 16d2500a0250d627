import { createActions } from './actions.js';
import { createApi } from './api.js';
import { createVmForm } from './create-vm.js';
import { byId } from './dom.js';
import { formatCountdown } from './format.js';
import { createLive } from './live.js';
import { createView } from './render.js';
import { createSnapshotDialog } from './snapshot-dialog.js';
import { connectEventStream } from './sse.js';
import { resetState, state } from './store.js';
import { resetToasts, toast } from './toasts.js';
import { explain, isUnavailable, loadErrorSentences } from './errors.js';
import { createViews } from './views.js';
import { addEvents } from './store.js';
import { h } from './dom.js';

const KEY_STORAGE = 'volsnap.apiKey';

/** What the signed-in session uses; the modules read it at call time. */
const ctx = { api: null, live: null, stream: null };

const actions = createActions(ctx);
const dialog = createSnapshotDialog(ctx);
const vmForm = createVmForm(ctx);
const vmView = createView({
  onTakeSnapshot: (volume, opener) => dialog.open(volume, opener),
  onAction: (vm, body, button) => actions.run(vm, body, button),
  onSnapshotAll: (vm, button) => actions.snapshotAll(vm, button),
  onSnapshotChanged: (s) => dialog.snapshotChanged(s),
  isBusy: (vmId, action) => actions.isBusy(vmId, action),
  loadConsole: (vmId) => ctx.api.vmConsole(vmId),
});
const tables = createViews({
  api: () => ctx.api,
  loadSnapshots: (query) => ctx.api.listSnapshots(query),
  onSnapshotAction: (action, s, button) => void snapshotAction(action, s, button),
});
/** The VM cards and the tables, kept in step from one store. */
const view = {
  ...vmView,
  renderAll() {
    vmView.renderAll();
    tables.renderAll();
  },
  renderVm(id) {
    vmView.renderVm(id);
    tables.renderProgress();
  },
  renderOwnerOf(s) {
    vmView.renderOwnerOf(s);
    tables.renderAll();
  },
  patchSnapshot(id) {
    vmView.patchSnapshot(id);
    tables.renderProgress();
  },
  renderEvents: () => tables.renderEvents(),
};

// ---- Navigation: #/vms, #/volumes, #/snapshots[/<id>], #/jobs, #/events -------------------------------------
const VIEWS = ['vms', 'volumes', 'snapshots', 'jobs', 'events'];
function route() {
  const [, name = 'vms', id] = location.hash.replace(/\?.*$/, '').split('/');
  const current = VIEWS.includes(name) ? name : 'vms';
  for (const el of document.querySelectorAll('.view')) el.hidden = el.dataset.view !== current;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.view === current) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const params = new URLSearchParams(location.hash.split('?')[1] ?? '');
  if (current === 'snapshots' && params.has('volume')) {
    tables.setSnapshotFilter('volume', params.get('volume'));
    void tables.reloadSnapshots().catch(() => undefined);
  }
  if (current === 'snapshots' && id) void tables.openDetail(id);
  else {
    void tables.openDetail(null);
    const title = document.getElementById(`${current}-title`);
    if (title && ctx.api && routed) title.focus();
  }
  routed = true;
}
let routed = false;
window.addEventListener('hashchange', route);

// ---- Snapshot actions: delete, revert (confirmed), create volume ----------------------------------------------
const confirmDialog = byId('confirm-dialog');
function confirmAction({ title, text, ok }) {
  return new Promise((resolve) => {
    byId('confirm-title').textContent = title;
    byId('confirm-text').textContent = text;
    byId('confirm-ok').textContent = ok;
    const done = (answer) => {
      confirmDialog.removeEventListener('close', onClose);
      resolve(answer);
    };
    const onClose = () => done(confirmDialog.returnValue === 'ok');
    confirmDialog.returnValue = '';
    confirmDialog.addEventListener('close', onClose);
    confirmDialog.showModal();
    byId('confirm-cancel').focus();
  });
}
byId('confirm-cancel').addEventListener('click', () => confirmDialog.close(''));
byId('confirm-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  confirmDialog.close('ok');
});

const volumeDialog = byId('volume-dialog');
let volumeFor = null;
byId('volume-cancel').addEventListener('click', () => volumeDialog.close());
byId('volume-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const s = volumeFor;
  if (!s) return;
  const create = byId('volume-create');
  create.disabled = true;
  byId('volume-error').textContent = '';
  try {
    const name = byId('volume-name').value.trim();
    const vol = await ctx.api.createVolumeFromSnapshot(s.id, name ? { name } : {});
    volumeDialog.close();
    toast(`Volume ${vol.name} created from snapshot ${s.name}.`, { kind: 'success' });
    await ctx.live?.refreshAll();
  } catch (err) {
    const { sentence, detail } = explain(err);
    byId('volume-error').textContent = detail ? `${sentence} ${detail}` : sentence;
  } finally {
    create.disabled = false;
  }
});

async function snapshotAction(action, s, button) {
  const volume = state.volumes.get(s.volumeId);
  const volName = volume?.name ?? 'its volume';
  if (action === 'create-volume') {
    volumeFor = s;
    byId('volume-dialog-text').textContent = `A new detached data disk with the contents of snapshot ${s.name} (of ${volName}).`;
    byId('volume-name').value = '';
    byId('volume-error').textContent = '';
    volumeDialog.showModal();
    byId('volume-name').focus();
    return;
  }
  const confirmed =
    action === 'delete'
      ? await confirmAction({ title: `Delete snapshot ${s.name}?`, text: `Its backup and its copy on primary storage are deleted. This cannot be undone.`, ok: 'Delete snapshot' })
      : await confirmAction({ title: `Revert ${volName} to snapshot ${s.name}?`, text: `Everything written to ${volName} since the snapshot was taken is lost.`, ok: 'Revert volume' });
  button?.focus();
  if (!confirmed) return;
  button?.setAttribute('aria-busy', 'true');
  try {
    if (action === 'delete') {
      await ctx.api.deleteSnapshot(s.id);
      toast(`Snapshot ${s.name} deleted.`, { kind: 'success' });
      state.snapshots.delete(s.id);
      location.hash = '#/snapshots';
    } else {
      await ctx.api.revertSnapshot(s.id);
      toast(`Volume ${volName} reverted to snapshot ${s.name}.`, { kind: 'success' });
    }
  } catch (err) {
    const { sentence, detail } = explain(err);
    toast(`${action === 'delete' ? 'Deleting' : 'Reverting to'} snapshot ${s.name} failed. ${sentence}`, { kind: 'error', detail });
  } finally {
    button?.removeAttribute('aria-busy');
    await ctx.live?.refreshAll();
    await tables.reloadSnapshots().catch(() => undefined);
  }
}

// ---- Service availability: a banner while the service (or a dependency) is down; recovers by itself ----------
const serviceStatus = byId('service-status');
let down = false;
let retryTimer = null;
function setAvailability(up) {
  if (up === !down) return;
  down = !up;
  serviceStatus.textContent = down ? 'Service unavailable, retrying…' : '';
  serviceStatus.classList.toggle('down', down);
  if (down && !retryTimer) {
    retryTimer = setInterval(() => void ctx.live?.refreshAll(), 3000);
  } else if (!down) {
    clearInterval(retryTimer);
    retryTimer = null;
    problem.hidden = true;
    void ctx.live?.refreshAll();
  }
}

const signInSection = byId('sign-in');
const appSection = byId('app');
const sessionBar = byId('session');
const liveStatus = byId('live-status');
const problem = byId('problem');

function setLiveStatus(status) {
  liveStatus.textContent = status === 'live' ? 'Live updates on' : 'Reconnecting…';
  liveStatus.dataset.status = status;
}

function showProblem(err) {
  if (err?.status === 401) return; // handled by signing out
  if (isUnavailable(err)) return setAvailability(false); // the banner says so, and the page retries
  const { sentence, detail } = explain(err);
  problem.textContent = `Could not refresh. ${sentence}${detail ? ` ${detail}` : ''}`;
  problem.hidden = false;
}

/** Why the page signs out on a 401: a key never accepted was wrong; one that worked was revoked or disabled since. */
const WRONG_KEY = 'That API key was not accepted: no account has it. Check the key and try again.';
const SAVED_KEY_REJECTED = 'The API key this tab had saved is no longer accepted (revoked, or its account disabled). Sign in again.';
const KEY_REJECTED = 'The API key is no longer accepted (revoked, or its account disabled). Sign in again.';

async function signIn(key, { saved = false } = {}) {
  let signedIn = false;
  const rejected = () => signOut(signedIn ? KEY_REJECTED : saved ? SAVED_KEY_REJECTED : WRONG_KEY);
  const api = createApi(key, {
    onUnauthorized: rejected,
    onAvailability: (up) => ctx.api === api && setAvailability(up),
  });
  ctx.api = api;
  ctx.live = createLive({ api, view, onError: showProblem });
  const [account, isos, offerings, hosts, config] = await Promise.all([
    api.account(),
    api.isos(),
    api.serviceOfferings(),
    api.hosts(),
    fetch('/ui/config.json').then((r) => (r.ok ? r.json() : null), () => null),
    loadErrorSentences(),
  ]);
  if (ctx.api !== api) return;
  signedIn = true;
  state.catalogs = { isos, offerings, hosts };
  state.account = account;
  state.config = config;
  byId('account').replaceChildren('Signed in as ', h('strong', {}, account.name), account.role === 'admin' ? ' (admin)' : '');
  byId('nav').hidden = false;
  api.listEvents({ limit: 1000 }).then(
    (events) => {
      addEvents(events);
      tables.renderEvents();
    },
    (err) => showProblem(err),
  );
  vmForm.fillChoices();
  signInSection.hidden = true;
  appSection.hidden = false;
  sessionBar.hidden = false;
  await ctx.live.refreshAll();
  await tables.reloadSnapshots().catch(showProblem);
  route();
  ctx.stream = connectEventStream({
    key,
    onEvent: (e) => ctx.live?.onEvent(e),
    onProgress: (p) => ctx.live?.onProgress(p),
    onReady: () => {
      problem.hidden = true;
      setAvailability(true);
      // (Re)connected: anything may have happened while we were away.
      void ctx.live?.refreshAll();
    },
    onStatus: (status) => {
      setLiveStatus(status);
      // The stream dropped: ask the API, which tells whether the service itself is down (banner, retries).
      if (status === 'reconnecting') void ctx.live?.refreshAll();
    },
    onUnauthorized: rejected,
  });
}

function signOut(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  ctx.stream?.close();
  ctx.stream = null;
  ctx.api = null;
  ctx.live = null;
  dialog.close();
  resetState();
  resetToasts();
  view.renderAll();
  appSection.hidden = true;
  sessionBar.hidden = true;
  byId('nav').hidden = true;
  setAvailability(true);
  problem.hidden = true;
  signInSection.hidden = false;
  byId('sign-in-error').textContent = message ?? '';
  byId('api-key').value = '';
  byId('api-key').focus();
}

byId('sign-in-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const key = byId('api-key').value.trim();
  const button = byId('sign-in-submit');
  if (!key) return;
  button.disabled = true;
  byId('sign-in-error').textContent = '';
  try {
    await signIn(key);
    sessionStorage.setItem(KEY_STORAGE, key);
    (document.querySelector('.view:not([hidden]) h2') ?? byId('vms-title')).focus();
  } catch (err) {
    if (err?.status !== 401) byId('sign-in-error').textContent = `Could not sign in. ${explain(err).sentence}`;
  } finally {
    button.disabled = false;
  }
});

byId('sign-out').addEventListener('click', () => signOut());

// Countdowns to the next backup retry tick in place.
setInterval(() => {
  for (const el of document.querySelectorAll('[data-countdown]')) el.textContent = formatCountdown(el.dataset.countdown);
}, 1000);

const saved = sessionStorage.getItem(KEY_STORAGE);
if (saved) {
  signIn(saved, { saved: true }).catch((err) => {
    if (err?.status !== 401) {
      signOut();
      byId('sign-in-error').textContent = `Could not sign in. ${explain(err).sentence}`;
    }
  });
} else {
  signInSection.hidden = false;
  byId('api-key').focus();
}


