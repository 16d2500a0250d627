import { byId, h } from './dom.js';
import { explainText } from './errors.js';
import { formatBytes, formatCountdown, formatDateTime, percent } from './format.js';
import { accountName, isAdmin, isInFlight, state } from './store.js';
import { createTable } from './table.js';

/**
 * The tables (Volumes, Snapshots, Events, Backups in flight) and the snapshot detail with its actions. Rows
 * come from the store (filled from the API's list endpoints); the Snapshots view asks the API with its filters.
 */

export const volumeName = (id) => state.volumes.get(id)?.name ?? null;
export const vmName = (id) => (id ? (state.vms.get(id)?.name ?? null) : null);
const link = (href, text, label) => h('a', { href, 'data-key': `link:${href}`, ...(label ? { 'aria-label': label } : {}) }, text);
const stateBadge = (s) => h('span', { class: ['state', `state-${s}`] }, s);
/** The account column: admins only (they see every account's objects; two "web-1" VMs are told apart by it). */
const accountColumn = { key: 'account', label: 'Account', when: isAdmin, sort: (x) => accountName(x.accountId), cell: (x) => accountName(x.accountId) };
const time = (iso) => (iso ? h('time', { datetime: iso }, formatDateTime(iso)) : '—');

/** The backup copy's size: what was written to the image store (physical), not the disk's virtual size. */
export function physicalSize(s) {
  const image = s.storeRefs?.find((r) => r.role === 'Image' && r.state !== 'Destroyed' && r.state !== 'Failed');
  return image?.sizeBytes ?? null;
}

/** What the detail says in place of a physical size when there is none. */
function noBackupText(s) {
  if (s.state !== 'Error') return 'not backed up yet';
  // Its primary copy never existed: creation failed, there was nothing to back up.
  const created = s.storeRefs?.some((r) => r.role === 'Primary') || s.backup.attempts > 0;
  return created ? 'none: the backup failed' : 'none: the snapshot could not be created';
}
/** The disk's virtual size when the snapshot was taken. */
export const virtualSize = (s) => s.backup?.bytesTotal || null;

function progressText(s) {
  const b = s.backup;
  if (s.state === 'BackingUp' && b.bytesTotal > 0) return `${percent(b.bytesDone, b.bytesTotal)}% (${formatBytes(b.bytesDone)} of ${formatBytes(b.bytesTotal)} virtual)`;
  if (s.state === 'BackingUp') return 'starting…';
  if (s.state === 'CreatedOnPrimary') return 'backup starts soon';
  return 'creating on primary storage…';
}

const countdown = (iso) =>
  iso ? h('span', {}, h('time', { datetime: iso }, formatDateTime(iso)), ' (', h('span', { 'data-countdown': iso }, formatCountdown(iso)), ')') : '—';

/**
 * Why an action on a snapshot is not possible now, in plain words (the service's rules: docs/design.md §6 and
 * services/snapshots.ts), or null when it is.
 */
export function snapshotActionReason(action, s) {
  const volume = state.volumes.get(s.volumeId);
  const vm = volume?.vmId ? state.vms.get(volume.vmId) : null;
  if (isInFlight(s)) return `Not possible while the snapshot is being ${s.state === 'BackingUp' ? 'backed up' : 'created'}; wait until it is backed up.`;
  if (s.state === 'Destroying' || s.state === 'Destroyed') return 'The snapshot has been deleted.';
  if (action === 'delete') return null;
  if (s.state !== 'BackedUp') return 'Only a backed-up snapshot can be used; this one failed.';
  if (action === 'create-volume') {
    if (!s.storeRefs.some((r) => r.role === 'Image' && r.state === 'Ready')) return 'The snapshot has no usable backup.';
    return null;
  }
  // revert
  if (!volume || volume.state === 'Destroyed') return 'Its volume no longer exists; create a new volume from the snapshot instead.';
  if (!s.storeRefs.some((r) => r.role === 'Primary' && r.state === 'Ready')) return 'The snapshot is no longer on primary storage; create a new volume from it instead.';
  if (volume.state !== 'Ready') return `Its volume is ${volume.state}; try again when it is Ready.`;
  const other = [...state.snapshots.values()].find((o) => o.volumeId === s.volumeId && o.id !== s.id && isInFlight(o));
  if (other) return `Another snapshot of this volume ("${other.name}") is being backed up; wait until it has finished.`;
  if (vm && vm.state === 'Running') return `Its VM ${vm.name} is running; stop the VM first.`;
  return null;
}

export function createViews({ api, onSnapshotAction, loadSnapshots }) {
  // ---- Volumes ---------------------------------------------------------------------------------------------
  const volFilters = { state: '', vm: '', q: '' };
  const volumes = createTable({
    mount: 'volumes-table',
    caption: 'Volumes',
    rowKey: (v) => v.id,
    emptyText: 'No volumes match.',
    initialSort: { key: 'created', dir: 'desc' },
    columns: [
      { key: 'name', label: 'Name', sort: (v) => v.name, cell: (v) => link(`#/snapshots?volume=${v.id}`, v.name, `${v.name}: its snapshots`) },
      accountColumn,
      { key: 'type', label: 'Type', sort: (v) => v.type, cell: (v) => v.type },
      { key: 'state', label: 'State', sort: (v) => v.state, cell: (v) => stateBadge(v.state) },
      { key: 'vm', label: 'VM', sort: (v) => vmName(v.vmId) ?? '', cell: (v) => vmName(v.vmId) ?? (v.vmId ? '—' : 'detached') },
      { key: 'size', label: 'Virtual size', sort: (v) => v.sizeBytes, cell: (v) => formatBytes(v.sizeBytes), className: 'num' },
      { key: 'snapshots', label: 'Snapshots', sort: (v) => countSnaps(v.id), cell: (v) => String(countSnaps(v.id)), className: 'num' },
      { key: 'created', label: 'Created', sort: (v) => v.createdAt, cell: (v) => time(v.createdAt) },
    ],
  });
  const countSnaps = (volumeId) => [...state.snapshots.values()].filter((s) => s.volumeId === volumeId && s.state !== 'Destroyed').length;
  function renderVolumes() {
    const q = volFilters.q.toLowerCase();
    volumes.setRows(
      [...state.volumes.values()].filter(
        (v) =>
          (volFilters.state ? v.state === volFilters.state : v.state !== 'Destroyed') &&
          (!volFilters.vm || v.vmId === volFilters.vm || (volFilters.vm === 'detached' && !v.vmId)) &&
          (!q || v.name.toLowerCase().includes(q) || v.id === q),
      ),
    );
  }
  bindFilters('volumes', volFilters, () => {
    volumes.resetPage();
    renderVolumes();
  });

  // ---- Snapshots -------------------------------------------------------------------------------------------
  const snapFilters = { state: '', volume: '', vm: '', q: '' };
  let snapRows = [];
  const snapshots = createTable({
    mount: 'snapshots-table',
    caption: 'Snapshots',
    rowKey: (s) => s.id,
    emptyText: 'No snapshots match.',
    initialSort: { key: 'created', dir: 'desc' },
    columns: [
      { key: 'name', label: 'Name', sort: (s) => s.name, cell: (s) => link(`#/snapshots/${s.id}`, s.name, `Snapshot ${s.name}: details and actions`) },
      accountColumn,
      {
        key: 'state',
        label: 'State',
        sort: (s) => s.state,
        // The live progress text under the badge, in a column of fixed width: the other columns do not move as it changes.
        cell: (s) => (isInFlight(s) ? h('span', {}, stateBadge(s.state), h('span', { class: 'muted live-text' }, progressText(s))) : stateBadge(s.state)),
        className: 'state-cell',
      },
      { key: 'volume', label: 'Volume', sort: (s) => volumeName(s.volumeId) ?? '', cell: (s) => volumeName(s.volumeId) ?? '(deleted volume)' },
      { key: 'vm', label: 'VM', sort: (s) => vmName(s.vmId) ?? '', cell: (s) => vmName(s.vmId) ?? (s.vmId ? '(deleted VM)' : 'detached') },
      { key: 'physical', label: 'Physical size', sort: (s) => physicalSize(s) ?? -1, cell: (s) => (physicalSize(s) === null ? '—' : formatBytes(physicalSize(s))), className: 'num' },
      { key: 'virtual', label: 'Virtual size', sort: (s) => virtualSize(s) ?? -1, cell: (s) => (virtualSize(s) === null ? '—' : formatBytes(virtualSize(s))), className: 'num' },
      { key: 'type', label: 'Backup', sort: (s) => (s.asyncBackup ? 1 : 0), cell: (s) => [s.asyncBackup ? 'async' : 'sync', s.backupType ? `, ${String(s.backupType).toLowerCase()}` : ''].join('') },
      { key: 'created', label: 'Created', sort: (s) => s.createdAt, cell: (s) => time(s.createdAt) },
    ],
  });
  function renderSnapshots() {
    // Progress and new snapshots arrive in the store: show the store's copy of each row the API listed,
    // and new ones that match the filters.
    const seen = new Set(snapRows.map((s) => s.id));
    const fresh = snapRows.map((s) => state.snapshots.get(s.id) ?? s);
    for (const s of state.snapshots.values()) if (!seen.has(s.id) && matches(s)) fresh.push(s);
    snapshots.setRows(fresh.filter((s) => (snapFilters.state ? s.state === snapFilters.state : s.state !== 'Destroyed')));
  }
  function matches(s) {
    const q = snapFilters.q.toLowerCase();
    return (
      (!snapFilters.state || s.state === snapFilters.state) &&
      (!snapFilters.volume || s.volumeId === snapFilters.volume) &&
      (!snapFilters.vm || s.vmId === snapFilters.vm) &&
      (!q || s.name.toLowerCase().includes(q) || s.id === q)
    );
  }
  /** Asks the API with the filters (state, volume, VM, text), then renders. */
  async function reloadSnapshots() {
    const query = {};
    if (snapFilters.state) query.state = snapFilters.state;
    if (snapFilters.volume) query.volumeId = snapFilters.volume;
    if (snapFilters.vm) query.vmId = snapFilters.vm;
    if (snapFilters.q) query.q = snapFilters.q;
    snapRows = await loadSnapshots(query);
    renderSnapshots();
  }
  bindFilters('snapshots', snapFilters, () => {
    snapshots.resetPage();
    void reloadSnapshots().catch(() => renderSnapshots());
  });

  // ---- Events ----------------------------------------------------------------------------------------------
  const evFilters = { level: '', resource: '', q: '' };
  const events = createTable({
    mount: 'events-table',
    caption: 'Events',
    rowKey: (e) => String(e.id),
    emptyText: 'No events match.',
    pageSize: 25,
    initialSort: { key: 'time', dir: 'desc' },
    columns: [
      { key: 'time', label: 'Time', sort: (e) => e.id, cell: (e) => time(e.createdAt) },
      { key: 'level', label: 'Level', sort: (e) => e.level, cell: (e) => h('span', { class: ['level', `level-${e.level}`] }, e.level) },
      { key: 'type', label: 'Type', sort: (e) => e.type, cell: (e) => e.type },
      { key: 'resource', label: 'Resource', sort: (e) => e.resourceType, cell: (e) => resourceCell(e) },
      accountColumn,
      { key: 'description', label: 'Description', cell: (e) => h('span', { class: 'wrap' }, e.description) },
    ],
  });
  function resourceCell(e) {
    if (e.resourceType === 'Snapshot') return link(`#/snapshots/${e.resourceId}`, `Snapshot ${state.snapshots.get(e.resourceId)?.name ?? ''}`.trim(), undefined);
    const name = e.resourceType === 'Volume' ? volumeName(e.resourceId) : e.resourceType === 'VirtualMachine' ? vmName(e.resourceId) : null;
    return `${e.resourceType}${name ? ` ${name}` : ''}`;
  }
  function renderEvents() {
    const q = evFilters.q.toLowerCase();
    events.setRows(
      state.events.filter(
        (e) =>
          (!evFilters.level || e.level === evFilters.level) &&
          (!evFilters.resource || e.resourceType === evFilters.resource) &&
          (!q || e.description.toLowerCase().includes(q) || e.type.toLowerCase().includes(q) || e.resourceId === q),
      ),
    );
  }
  bindFilters('events', evFilters, () => {
    events.resetPage();
    renderEvents();
  });

  // ---- Backups in flight -----------------------------------------------------------------------------------
  const jobs = createTable({
    mount: 'jobs-table',
    caption: 'Backups in flight',
    rowKey: (s) => s.id,
    emptyText: 'No backups are running.',
    initialSort: { key: 'created', dir: 'asc' },
    columns: [
      { key: 'name', label: 'Snapshot', sort: (s) => s.name, cell: (s) => link(`#/snapshots/${s.id}`, s.name, `Snapshot ${s.name}: details`) },
      accountColumn,
      { key: 'volume', label: 'Volume', sort: (s) => volumeName(s.volumeId) ?? '', cell: (s) => `${volumeName(s.volumeId) ?? '—'}${vmName(s.vmId) ? ` (VM ${vmName(s.vmId)})` : ''}` },
      { key: 'state', label: 'State', sort: (s) => s.state, cell: (s) => stateBadge(s.state) },
      {
        key: 'progress',
        label: 'Progress',
        sort: (s) => percent(s.backup.bytesDone, s.backup.bytesTotal),
        cell: (s) =>
          h(
            'span',
            { class: 'progress-line' },
            h('progress', {
              'aria-label': `Backup progress of ${s.name}`,
              ...(s.state === 'BackingUp' && s.backup.bytesTotal > 0 ? { max: s.backup.bytesTotal, value: s.backup.bytesDone } : {}),
            }),
            h('span', { class: 'live-text' }, progressText(s)),
          ),
        className: 'progress-cell',
      },
      { key: 'attempt', label: 'Attempt', sort: (s) => s.backup.attempts, cell: (s) => (s.backup.attempts ? `${s.backup.attempts} of ${s.backup.maxAttempts}` : '—') },
      { key: 'retry', label: 'Next retry', sort: (s) => s.backup.nextAttemptAt ?? '', cell: (s) => countdown(s.backup.nextAttemptAt) },
      { key: 'error', label: 'Last error', cell: (s) => (s.backup.lastError ? fullError(s.backup.lastError) : '—') },
      { key: 'created', label: 'Started', sort: (s) => s.createdAt, cell: (s) => time(s.createdAt) },
    ],
  });
  const inFlight = () => [...state.snapshots.values()].filter(isInFlight);
  function renderJobs() {
    jobs.setRows(inFlight());
    const n = inFlight().length;
    const badge = byId('jobs-count');
    badge.textContent = String(n);
    badge.dataset.count = String(n);
    byId('nav-jobs').setAttribute('aria-label', `Backups in flight: ${n}`);
  }

  // ---- Snapshot detail -------------------------------------------------------------------------------------
  let detailId = null;
  function renderDetail() {
    const box = byId('snapshot-detail');
    if (!detailId) {
      box.hidden = true;
      return;
    }
    const s = state.snapshots.get(detailId);
    box.hidden = false;
    if (!s) {
      box.replaceChildren(h('p', { class: 'muted' }, 'Loading the snapshot…'));
      return;
    }
    const b = s.backup;
    const physical = physicalSize(s);
    const action = (name, label, danger) => {
      const reason = snapshotActionReason(name, s);
      const whyId = `snap-why-${name}`;
      const btn = h(
        'button',
        {
          type: 'button',
          class: ['btn', danger && 'btn-danger'],
          'data-key': `snap:${s.id}:${name}`,
          'aria-disabled': reason ? 'true' : undefined,
          'aria-describedby': reason ? whyId : undefined,
        },
        label,
      );
      btn.addEventListener('click', () => {
        if (btn.getAttribute('aria-disabled') !== 'true') onSnapshotAction(name, s, btn);
      });
      return { btn, why: reason ? h('li', { id: whyId }, h('strong', {}, label), ': ', reason) : null };
    };
    const acts = [action('create-volume', 'Create volume'), action('revert', 'Revert volume', true), action('delete', 'Delete', true)];
    const why = acts.map((a) => a.why).filter(Boolean);
    const admin = state.account?.role === 'admin';
    const temporal = state.config?.temporalUiUrl
      ? `${state.config.temporalUiUrl}/namespaces/${encodeURIComponent(state.config.namespace)}/workflows/${encodeURIComponent(s.workflowId)}`
      : null;
    box.replaceChildren(
      h(
        'article',
        { class: 'card detail', 'aria-labelledby': 'snapshot-detail-title' },
        h('div', { class: 'detail-head' }, h('h3', { id: 'snapshot-detail-title', tabindex: '-1' }, `Snapshot ${s.name}`), stateBadge(s.state), h('a', { href: '#/snapshots', class: 'btn', 'data-key': 'detail:close' }, 'Back to the list')),
        h('div', { class: 'toolbar', role: 'group', 'aria-label': `Actions for snapshot ${s.name}` }, acts.map((a) => a.btn)),
        why.length ? h('ul', { class: 'reasons', 'aria-label': 'Why some actions are unavailable' }, why) : h('p', { class: 'reasons ok muted' }, 'Every action is available.'),
        h(
          'dl',
          { class: 'detail-facts' },
          fact('State', s.state),
          admin ? fact('Account', accountName(s.accountId)) : null,
          fact('Volume', `${volumeName(s.volumeId) ?? '(deleted volume)'}`),
          fact('VM', vmName(s.vmId) ?? (s.vmId ? '(deleted VM)' : 'none (detached volume)')),
          fact('Created', time(s.createdAt)),
          fact('Backup', s.asyncBackup ? 'asynchronous (the snapshot was ready before its backup)' : 'synchronous (the request waited for the backup)'),
          fact('Physical size (backup written)', physical === null ? noBackupText(s) : formatBytes(physical)),
          fact('Virtual size (disk)', virtualSize(s) === null ? '—' : formatBytes(virtualSize(s))),
          s.backupType ? fact('Backup type', String(s.backupType)) : null,
          s.parentId ? fact('Parent snapshot', state.snapshots.get(s.parentId) ? link(`#/snapshots/${s.parentId}`, state.snapshots.get(s.parentId).name) : s.parentId) : null,
          s.chainLength !== undefined && s.chainLength !== null ? fact('Delta chain length', String(s.chainLength)) : null,
          fact('Attempts', b.attempts ? `${b.attempts} of ${b.maxAttempts} (retried every ${b.retryIntervalSeconds} s)` : `none yet (up to ${b.maxAttempts})`),
          isInFlight(s) ? fact('Progress', progressText(s)) : null,
          fact('Next retry', countdown(b.nextAttemptAt)),
          fact('Last error', b.lastError ? fullError(b.lastError, true) : 'none'),
          fact('Workflow', temporal && admin ? h('a', { href: temporal, target: '_blank', rel: 'noopener' }, s.workflowId, h('span', { class: 'visually-hidden' }, ' (opens the Temporal Web UI)')) : h('code', {}, s.workflowId)),
          fact('Id', h('code', {}, s.id)),
        ),
        h('h4', {}, 'Copies'),
        h(
          'table',
          { class: 'data' },
          h('caption', { class: 'visually-hidden' }, 'Copies of the snapshot'),
          h('thead', {}, h('tr', {}, ['Where', 'State', 'Size', 'Checksum', ...(admin ? ['Path'] : [])].map((x) => h('th', { scope: 'col' }, x)))),
          h(
            'tbody',
            {},
            s.storeRefs.length
              ? s.storeRefs.map((r) =>
                  h(
                    'tr',
                    {},
                    h('th', { scope: 'row' }, r.role === 'Primary' ? 'Primary storage' : 'Image store (backup)'),
                    h('td', {}, r.state),
                    h('td', { class: 'num' }, r.sizeBytes === null ? '—' : formatBytes(r.sizeBytes)),
                    h('td', {}, r.checksum ? h('code', {}, r.checksum) : '—'),
                    admin ? h('td', {}, r.installPath ? h('code', {}, r.installPath) : '—') : null,
                  ),
                )
              : h('tr', {}, h('td', { colspan: admin ? '5' : '4' }, 'No copies.')),
          ),
        ),
      ),
    );
  }
  async function openDetail(id) {
    detailId = id;
    renderDetail();
    if (id) {
      try {
        const s = await api().getSnapshot(id);
        state.snapshots.set(s.id, s);
      } catch (err) {
        if (detailId === id) byId('snapshot-detail').replaceChildren(h('p', { class: 'problem', role: 'alert' }, `Could not open the snapshot: ${explainText(err)}`));
        return;
      }
      if (detailId === id) {
        renderDetail();
        byId('snapshot-detail-title').focus();
      }
    }
  }

  function fillFilterChoices() {
    const vmOptions = [...state.vms.values()].sort((a, b) => a.name.localeCompare(b.name)).map((v) => [v.id, `${v.name}${v.state === 'Destroyed' ? ' (destroyed)' : ''}`]);
    const volOptions = [...state.volumes.values()].sort((a, b) => a.name.localeCompare(b.name)).map((v) => [v.id, `${v.name}${v.state === 'Destroyed' ? ' (deleted)' : ''}`]);
    setOptions('snapshots-filter-vm', [['', 'Any VM'], ...vmOptions]);
    setOptions('snapshots-filter-volume', [['', 'Any volume'], ...volOptions]);
    setOptions('volumes-filter-vm', [['', 'Any VM'], ['detached', 'Detached'], ...vmOptions]);
  }

  return {
    renderAll() {
      fillFilterChoices();
      renderVolumes();
      renderSnapshots();
      renderEvents();
      renderJobs();
      renderDetail();
    },
    renderProgress() {
      renderSnapshots();
      renderJobs();
      renderDetail();
    },
    renderEvents,
    reloadSnapshots,
    openDetail,
    setSnapshotFilter(key, value) {
      snapFilters[key] = value;
      const el = document.getElementById(`snapshots-filter-${key}`);
      if (el) el.value = value;
    },
    get detailId() {
      return detailId;
    },
  };
}

function setOptions(id, options) {
  const select = byId(id);
  const current = select.value;
  select.replaceChildren(...options.map(([value, label]) => h('option', { value }, label)));
  if (options.some(([v]) => v === current)) select.value = current;
}

function fact(term, value) {
  return h('div', {}, h('dt', {}, term), h('dd', {}, value));
}

/** An error in full: the first line shown, the whole text one click away (never cut). */
function fullError(message, open = false) {
  const firstLine = message.split('\n')[0];
  if (message.length <= 100 && firstLine === message) return h('span', { class: 'snap-error' }, message);
  return h('details', { class: 'snap-error', ...(open ? { open: true } : {}) }, h('summary', {}, 'Show the full error'), h('p', { class: 'full-error' }, message));
}

/** Filter controls: `<prefix>-filter-<key>` elements; text input is debounced. */
function bindFilters(prefix, filters, onChange) {
  let timer;
  for (const key of Object.keys(filters)) {
    const el = document.getElementById(`${prefix}-filter-${key}`);
    if (!el) continue;
    const apply = () => {
      filters[key] = el.value.trim();
      onChange();
    };
    if (el.tagName === 'INPUT') {
      el.addEventListener('input', () => {
        clearTimeout(timer);
        timer = setTimeout(apply, 250);
      });
    } else el.addEventListener('change', apply);
  }
}
