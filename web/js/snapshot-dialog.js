import { byId, randomId } from './dom.js';
import { formatBytes, percent } from './format.js';
import { notifyBackedUp, notifyCreated } from './live.js';
import { state } from './store.js';
import { toast } from './toasts.js';
import { explainText } from './errors.js';

/**
 * The "Create Volume Snapshot" dialog (the seed's UI flow): a name, the "Asynchronous backup" checkbox and
 * Create. Ticked, the request answers once the snapshot exists on primary storage and the dialog closes; left
 * unticked (the pre-feature flow) the request answers only when the backup is done, and the dialog stays busy
 * meanwhile, following the backup's progress. Escape or Close shuts it at any time (a pending request goes
 * on, and its outcome still arrives as a notification).
 */
export function createSnapshotDialog(ctx) {
  const dialog = byId('snapshot-dialog');
  const form = byId('snapshot-form');
  const nameInput = byId('snapshot-name');
  const asyncBox = byId('snapshot-async');
  const createBtn = byId('snapshot-create');
  const cancelBtn = byId('snapshot-cancel');
  const volumeText = byId('snapshot-volume');
  const wait = byId('snapshot-wait');
  const waitText = byId('snapshot-wait-text');
  const waitBar = byId('snapshot-wait-progress');
  const errorBox = byId('snapshot-error');

  /** The open dialog's request; a request outliving its dialog (closed, reopened) no longer touches it. */
  let session = null;

  function setBusy(busy, asyncBackup) {
    form.setAttribute('aria-busy', busy ? 'true' : 'false');
    createBtn.disabled = busy;
    nameInput.disabled = busy;
    asyncBox.disabled = busy;
    cancelBtn.textContent = busy ? 'Close' : 'Cancel';
    wait.hidden = !busy;
    if (busy) {
      waitText.textContent = asyncBackup ? 'Creating the snapshot on primary storage…' : 'Waiting for the backup to complete…';
      waitBar.removeAttribute('value');
      waitBar.removeAttribute('aria-valuetext');
    }
  }

  function open(volume, opener) {
    session = { volume, opener, pending: false };
    form.reset();
    asyncBox.checked = false;
    errorBox.textContent = '';
    setBusy(false, false);
    volumeText.textContent = `Volume ${volume.name} (${volume.type}, ${formatBytes(volume.sizeBytes)})`;
    dialog.showModal();
    nameInput.focus();
  }

  function isMine(s, snapshot) {
    if (s.snapshotId) return s.snapshotId === snapshot.id;
    return snapshot.volumeId === s.volume.id && !s.known.has(snapshot.id) && (!s.name || snapshot.name === s.name);
  }

  /** Follows the pending synchronous request's snapshot (from the event stream) in the busy dialog. */
  function snapshotChanged(snapshot) {
    const s = session;
    if (!s?.pending || s.asyncBackup || !dialog.open || !isMine(s, snapshot)) return;
    s.snapshotId = snapshot.id;
    const b = snapshot.backup;
    if (snapshot.state === 'BackingUp' && b.bytesTotal > 0) {
      const text = `${formatBytes(b.bytesDone)} of ${formatBytes(b.bytesTotal)} (${percent(b.bytesDone, b.bytesTotal)}%)`;
      waitBar.max = b.bytesTotal;
      waitBar.value = b.bytesDone;
      waitBar.setAttribute('aria-valuetext', text);
      waitText.textContent = `Waiting for the backup to complete… snapshot ${snapshot.name}: ${text}, attempt ${b.attempts} of ${b.maxAttempts}`;
    } else {
      waitText.textContent = `Waiting for the backup to complete… snapshot ${snapshot.name} is ${snapshot.state}`;
    }
  }

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const s = session;
    if (!s || s.pending) return;
    const asyncBackup = asyncBox.checked;
    s.pending = true;
    s.asyncBackup = asyncBackup;
    s.name = nameInput.value.trim();
    s.known = new Set(state.snapshots.keys());
    errorBox.textContent = '';
    setBusy(true, asyncBackup);
    try {
      const body = { asyncBackup, ...(s.name ? { name: s.name } : {}) };
      const snapshot = await ctx.api.takeSnapshot(s.volume.id, body, `ui-${randomId()}`);
      ctx.live.snapshotFromApi(snapshot);
      if (snapshot.state === 'BackedUp') notifyBackedUp(snapshot);
      else notifyCreated(snapshot);
      if (session === s && dialog.open) dialog.close();
    } catch (err) {
      const snapshotId = err?.details?.snapshotId;
      if (typeof snapshotId === 'string') ctx.live.refreshSnapshot(snapshotId);
      const message = explainText(err);
      if (session === s && dialog.open) {
        setBusy(false, asyncBackup);
        errorBox.textContent = message;
        nameInput.focus();
      } else {
        toast(`Snapshot of ${s.volume.name} failed: ${message}`, { kind: 'error', ...(snapshotId ? { key: `${snapshotId}:done` } : {}) });
      }
    } finally {
      s.pending = false;
    }
  });

  cancelBtn.addEventListener('click', () => dialog.close());

  // Back to the button that opened the dialog (rebuilt meanwhile, perhaps: find it again by its key).
  dialog.addEventListener('close', () => {
    const opener = session?.opener;
    if (!opener) return;
    const target = opener.isConnected ? opener : document.querySelector(`[data-key="${CSS.escape(opener.dataset.key ?? '')}"]`);
    if (target instanceof HTMLElement) target.focus();
  });

  return { open, snapshotChanged, close: () => dialog.open && dialog.close() };
}
