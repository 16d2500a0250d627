import { formatTime } from './format.js';
import { addEvents, applyProgress, isAdmin, isInFlight, state, upsertSnapshot, vmIdOfSnapshot } from './store.js';
import { toast } from './toasts.js';

/**
 * Keeps the store in step with the service: full refreshes (on connect and after VM/volume events), one
 * snapshot at a time (after its events), allowed-actions per VM (after every event that can change them) and
 * the SSE progress messages. Each refresh is coalesced: a burst of events causes one request, not many.
 */
export function createLive({ api, view, onError }) {
  const serial = (fn) => {
    let running = null;
    let again = false;
    return () => {
      if (running) {
        again = true;
        return running;
      }
      running = (async () => {
        try {
          let result;
          do {
            again = false;
            result = await fn();
          } while (again);
          return result;
        } finally {
          running = null;
        }
      })();
      return running;
    };
  };
  const keyed = (fn) => {
    const runners = new Map();
    return (key) => {
      let run = runners.get(key);
      if (!run) {
        run = serial(() => fn(key));
        runners.set(key, run);
      }
      return run();
    };
  };
  const guard = (p) => p.catch((err) => onError(err));

  const refreshAll = serial(async () => {
    // Deleted volumes too: their snapshots (a destroyed VM's disks, say) still name them.
    const [vms, volumes, gone, snapshots, accounts] = await Promise.all([
      api.listVms(),
      api.listVolumes(),
      api.listVolumes({ state: 'Destroyed' }),
      api.listSnapshots(),
      // The admin sees every account's objects: their tables and cards name the account.
      isAdmin() ? api.listAccounts() : Promise.resolve(null),
    ]);
    if (accounts) state.accounts = new Map(accounts.map((a) => [a.id, a.name]));
    state.vms = new Map(vms.map((v) => [v.id, v]));
    state.volumes = new Map([...gone, ...volumes].map((v) => [v.id, v]));
    const fresh = new Map(snapshots.map((s) => [s.id, s]));
    // Keep a snapshot we heard about after this list was read (its GET may be newer).
    for (const [id, s] of state.snapshots) {
      const f = fresh.get(id);
      if (f && Date.parse(s.updatedAt) > Date.parse(f.updatedAt)) fresh.set(id, s);
    }
    state.snapshots = fresh;
    const live = vms.filter((v) => v.state !== 'Destroyed');
    const allowed = await Promise.all(live.map((v) => api.allowedActions(v.id).catch(() => undefined)));
    state.allowed = new Map();
    live.forEach((v, i) => allowed[i] && state.allowed.set(v.id, allowed[i]));
    view.renderAll();
  });

  const refreshAllowed = keyed(async (vmId) => {
    if (!state.vms.has(vmId)) return;
    const next = await api.allowedActions(vmId);
    if (JSON.stringify(state.allowed.get(vmId)) === JSON.stringify(next)) return;
    state.allowed.set(vmId, next);
    view.renderVm(vmId);
  });

  const refreshSnapshot = keyed(async (id) => {
    let s;
    try {
      s = await api.getSnapshot(id);
    } catch (err) {
      if (err.status === 404) {
        state.snapshots.delete(id);
        view.renderAll();
        return;
      }
      throw err;
    }
    const known = state.snapshots.has(id);
    if (upsertSnapshot(s)) {
      if (known) view.patchSnapshot(id);
      else view.renderOwnerOf(s);
    }
    view.snapshotChanged(state.snapshots.get(id));
    const vmId = vmIdOfSnapshot(s);
    if (vmId) await refreshAllowed(vmId);
    return s;
  });

  /** An audit event (an unnamed SSE message). */
  async function onEvent(e) {
    addEvents([e]);
    view.renderEvents?.();
    if (e.resourceType === 'Snapshot') {
      const s = await refreshSnapshot(e.resourceId);
      const name = s?.name ?? e.resourceId;
      const to = e.details?.to;
      if (to === 'CreatedOnPrimary') notifyCreated(s ?? { id: e.resourceId, name });
      else if (to === 'BackedUp') notifyBackedUp(s ?? { id: e.resourceId, name });
      else if (to === 'Error') notifyFailed(s ?? { id: e.resourceId, name, backup: { lastError: e.description } }, e.details?.from);
      else if (e.type === 'SNAPSHOT.BACKUP' && e.level === 'WARN') {
        const next = e.details?.nextAttemptAt;
        toast(`Snapshot ${name}: ${e.description}${next ? `; next attempt at ${formatTime(next)}` : ''}`, {
          kind: 'warning',
          key: `${e.resourceId}:attempt:${e.details?.attempt ?? e.id}`,
        });
      }
    } else if (e.resourceType === 'VirtualMachine' || e.resourceType === 'Volume') {
      await refreshAll();
    }
  }

  /** A `progress` message: state, attempt of N, bytes done/total, next retry and last error of an in-flight snapshot. */
  function onProgress(p) {
    const r = applyProgress(p);
    if (!r.known || r.stateChanged || (r.attemptChanged && !r.retryKnown)) {
      // A snapshot we have not seen, or a new state (store references change with it): read it whole.
      void guard(refreshSnapshot(p.snapshotId));
      return;
    }
    if (r.changed) {
      view.patchSnapshot(p.snapshotId);
      view.snapshotChanged(state.snapshots.get(p.snapshotId));
    }
  }

  return {
    refreshAll: () => guard(refreshAll()),
    refreshAllowed: (vmId) => guard(refreshAllowed(vmId)),
    refreshSnapshot: (id) => guard(refreshSnapshot(id)),
    onEvent: (e) => void guard(onEvent(e)),
    onProgress,
    /** Records a snapshot the page itself got from the API (a POST answer). */
    snapshotFromApi(s) {
      const known = state.snapshots.has(s.id);
      if (upsertSnapshot(s)) {
        if (known) view.patchSnapshot(s.id);
        else view.renderOwnerOf(s);
      }
      const vmId = vmIdOfSnapshot(s);
      if (vmId) void guard(refreshAllowed(vmId));
      if (!isInFlight(s)) view.snapshotChanged(s);
    },
  };
}

export function notifyCreated(s) {
  toast(`Snapshot ${s.name} created on primary storage; backing up…`, { key: `${s.id}:created` });
}

export function notifyBackedUp(s) {
  toast(`Snapshot ${s.name} backed up to secondary storage.`, { kind: 'success', key: `${s.id}:done` });
}

export function notifyFailed(s, from) {
  const creating = from === 'Allocated' || from === 'Creating';
  const why = s.backup?.lastError ?? 'unknown error';
  toast(creating ? `Snapshot ${s.name} could not be created: ${why}` : `Backup of snapshot ${s.name} failed: ${why}`, {
    kind: 'error',
    key: `${s.id}:done`,
  });
}
