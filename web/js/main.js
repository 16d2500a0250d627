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
import { resetToasts } from './toasts.js';

const KEY_STORAGE = 'volsnap.apiKey';

/** What the signed-in session uses; the modules read it at call time. */
const ctx = { api: null, live: null, stream: null };

const actions = createActions(ctx);
const dialog = createSnapshotDialog(ctx);
const vmForm = createVmForm(ctx);
const view = createView({
  onTakeSnapshot: (volume, opener) => dialog.open(volume, opener),
  onAction: (vm, body, button) => actions.run(vm, body, button),
  onSnapshotChanged: (s) => dialog.snapshotChanged(s),
  isBusy: (vmId, action) => actions.isBusy(vmId, action),
});

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
  problem.textContent = `Could not refresh: ${typeof err?.describe === 'function' ? err.describe() : (err?.message ?? String(err))}`;
  problem.hidden = false;
}

async function signIn(key) {
  const api = createApi(key, { onUnauthorized: () => signOut('The API key was not accepted. Sign in again.') });
  ctx.api = api;
  ctx.live = createLive({ api, view, onError: showProblem });
  const [isos, offerings, hosts] = await Promise.all([api.isos(), api.serviceOfferings(), api.hosts()]);
  if (ctx.api !== api) return;
  state.catalogs = { isos, offerings, hosts };
  vmForm.fillChoices();
  signInSection.hidden = true;
  appSection.hidden = false;
  sessionBar.hidden = false;
  await ctx.live.refreshAll();
  ctx.stream = connectEventStream({
    key,
    onEvent: (e) => ctx.live?.onEvent(e),
    onProgress: (p) => ctx.live?.onProgress(p),
    onReady: () => {
      problem.hidden = true;
      // (Re)connected: anything may have happened while we were away.
      void ctx.live?.refreshAll();
    },
    onStatus: setLiveStatus,
    onUnauthorized: () => signOut('The API key was not accepted. Sign in again.'),
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
    byId('vms-title').focus();
  } catch (err) {
    if (err?.status !== 401) byId('sign-in-error').textContent = `Could not sign in: ${err?.message ?? err}`;
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
  signIn(saved).catch((err) => {
    if (err?.status !== 401) {
      signOut();
      byId('sign-in-error').textContent = `Could not sign in: ${err?.message ?? err}`;
    }
  });
} else {
  signInSection.hidden = false;
  byId('api-key').focus();
}


