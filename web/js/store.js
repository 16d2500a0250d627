/** What the page knows, as the API last told it (plus live progress merged in). */

export const IN_FLIGHT = new Set(['Allocated', 'Creating', 'CreatedOnPrimary', 'BackingUp']);
const FINAL = new Set(['BackedUp', 'Error', 'Destroying', 'Destroyed']);

export const state = {
  vms: new Map(),
  volumes: new Map(),
  snapshots: new Map(),
  /** vmId -> GET /vms/{id}/allowed-actions answer */
  allowed: new Map(),
  catalogs: { isos: [], offerings: [], hosts: [] },
  /** Events as read (GET /events, then the stream), oldest first. */
  events: [],
  /** The signed-in account ({id, name, role}) and the page's configuration (/ui/config.json). */
  account: null,
  config: null,
  /** Admins only: account id -> name (GET /api/v1/accounts), for the account column. */
  accounts: new Map(),
};

export const isAdmin = () => state.account?.role === 'admin';

/** An account's name as the admin knows it (an account created since the last refresh: its id's start). */
export function accountName(id) {
  if (!id) return '—';
  return state.accounts.get(id) ?? `${id.slice(0, 8)}…`;
}

/** Adds events not yet known, keeping the most recent 2000. */
export function addEvents(list) {
  const known = new Set(state.events.map((e) => e.id));
  for (const e of list) if (!known.has(e.id)) state.events.push(e);
  state.events.sort((a, b) => a.id - b.id);
  if (state.events.length > 2000) state.events.splice(0, state.events.length - 2000);
}

export function resetState() {
  state.vms.clear();
  state.volumes.clear();
  state.snapshots.clear();
  state.allowed.clear();
  state.catalogs = { isos: [], offerings: [], hosts: [] };
  state.events = [];
  state.account = null;
  state.accounts = new Map();
}

/** Stores a snapshot unless we already hold a newer version of it. Returns whether anything changed. */
export function upsertSnapshot(s) {
  const old = state.snapshots.get(s.id);
  if (old && Date.parse(old.updatedAt) > Date.parse(s.updatedAt)) return false;
  if (old && JSON.stringify(old) === JSON.stringify(s)) return false;
  state.snapshots.set(s.id, s);
  return true;
}

/**
 * Merges an SSE `progress` message into the snapshot. A progress message never moves a finished snapshot
 * back into flight (it may have been computed just before the final transition). Returns what changed.
 */
export function applyProgress(p) {
  const s = state.snapshots.get(p.snapshotId);
  if (!s) return { known: false };
  if (FINAL.has(s.state)) return { known: true, changed: false };
  const stateChanged = s.state !== p.state;
  const attemptChanged = s.backup.attempts !== p.attempts;
  // The retry fields arrive with progress too; older servers' messages lack them, and then they stay as read.
  const retry = {};
  for (const k of ['maxAttempts', 'nextAttemptAt', 'lastError', 'kind', 'parentSnapshotId']) if (k in p) retry[k] = p[k];
  const retryChanged = Object.entries(retry).some(([k, v]) => s.backup[k] !== v);
  const changed = stateChanged || attemptChanged || retryChanged || s.backup.bytesDone !== p.bytesDone || s.backup.bytesTotal !== p.bytesTotal;
  if (changed) {
    state.snapshots.set(s.id, {
      ...s,
      state: p.state,
      backup: { ...s.backup, ...retry, attempts: p.attempts, bytesDone: p.bytesDone, bytesTotal: p.bytesTotal },
    });
  }
  return { known: true, changed, stateChanged, attemptChanged, retryKnown: 'nextAttemptAt' in p };
}

export function snapshotsOfVolume(volumeId) {
  return [...state.snapshots.values()]
    .filter((s) => s.volumeId === volumeId && s.state !== 'Destroyed')
    .sort((a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt));
}

/** Volumes attached to a VM, ROOT first then by device id. */
export function volumesOfVm(vmId) {
  return [...state.volumes.values()]
    .filter((v) => v.vmId === vmId)
    .sort((a, b) => (a.type === b.type ? (a.deviceId ?? 0) - (b.deviceId ?? 0) : a.type === 'ROOT' ? -1 : 1));
}

/**
 * Volumes that exist and are attached to no VM. The store also holds deleted volumes (their snapshots still name
 * them): those are not detached, they are gone, and offering "Take snapshot" on one fails with 404.
 */
export function detachedVolumes() {
  return [...state.volumes.values()]
    .filter((v) => v.vmId === null && v.state !== 'Destroyed')
    .sort((a, b) => a.name.localeCompare(b.name));
}

/** The VM a snapshot's volume belongs to (if any). */
export function vmIdOfSnapshot(s) {
  return s.vmId ?? state.volumes.get(s.volumeId)?.vmId ?? null;
}

export function isInFlight(s) {
  return IN_FLIGHT.has(s.state);
}
