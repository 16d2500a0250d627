import { byId, h, replacePreserving } from './dom.js';
import { formatBytes, formatCountdown, formatDateTime, formatTime, percent } from './format.js';
import { accountName, detachedVolumes, isAdmin, isInFlight, snapshotsOfVolume, state, vmIdOfSnapshot, volumesOfVm } from './store.js';

export const ACTION_LABELS = {
  start: 'Start',
  stop: 'Stop',
  reboot: 'Reboot',
  destroy: 'Destroy',
  reinstall: 'Reinstall',
  'attach-iso': 'Attach ISO',
  'detach-iso': 'Detach ISO',
  'attach-volume': 'Attach disk',
  'detach-volume': 'Detach disk',
  'change-service-offering': 'Change offering',
  migrate: 'Migrate',
};

/** Actions whose reason is listed on the VM card (detach-volume is explained on the disk it concerns). */
const VM_LEVEL = ['start', 'stop', 'reboot', 'destroy', 'reinstall', 'attach-iso', 'detach-iso', 'attach-volume', 'change-service-offering', 'migrate'];

/**
 * Renders the VM list and the detached volumes from the store. Whole VM cards are rebuilt when their data
 * changes (keeping focus and form values); progress only rebuilds the snapshot's row.
 */
export function createView({ onTakeSnapshot, onAction, onSnapshotAll, onSnapshotChanged, isBusy, loadConsole }) {
  const nameOf = (list, id) => list.find((x) => x.id === id)?.name ?? null;
  /** Each VM's console panel (admins): open or not, and the tail last read. Kept across re-renders. */
  const consoles = new Map();

  async function readConsole(vmId) {
    const c = consoles.get(vmId);
    c.loading = true;
    renderVm(vmId);
    try {
      Object.assign(c, { tail: await loadConsole(vmId), error: null });
    } catch (err) {
      c.error = err?.message ?? 'the console cannot be read';
    }
    c.loading = false;
    renderVm(vmId);
  }

  function consolePanel(vm) {
    const c = consoles.get(vm.id) ?? { open: false, tail: null, error: null, loading: false };
    consoles.set(vm.id, c);
    const body = c.error
      ? h('p', { class: 'form-error' }, c.error)
      : !c.tail
        ? h('p', { class: 'muted' }, c.loading ? 'Reading the console…' : 'Open to read the console.')
        : c.tail.lines.length
          ? h('pre', { class: 'console-tail', tabindex: '0', 'aria-label': `Console of VM ${vm.name}` }, c.tail.lines.join('\n'))
          : h('p', { class: 'muted' }, 'No console output yet: the VM has not run since it was created.');
    return h(
      'details',
      {
        class: 'console',
        'data-console': vm.id,
        open: c.open,
        // Setting `open` on a fresh card fires toggle too: only a change the user made reads the console.
        ontoggle: (e) => {
          if (e.target.open === c.open) return;
          c.open = e.target.open;
          if (c.open) void readConsole(vm.id);
        },
      },
      h('summary', {}, 'Console'),
      body,
      c.tail?.updatedAt ? h('p', { class: 'muted' }, `Last written ${formatDateTime(c.tail.updatedAt)}${c.tail.truncated ? '; older lines not shown' : ''}.`) : null,
      h('button', { type: 'button', class: 'btn', 'data-key': `vm:${vm.id}:console:refresh`, disabled: c.loading, onclick: () => void readConsole(vm.id) }, 'Refresh'),
    );
  }

  function renderAll() {
    const vms = [...state.vms.values()]
      .filter((v) => v.state !== 'Destroyed')
      .sort((a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt));
    const destroyed = state.vms.size - vms.length;
    const next = h(
      'div',
      { id: 'vm-list', class: 'vm-list' },
      vms.length ? vms.map(vmCard) : h('p', { class: 'empty' }, 'No virtual machines yet: create one above to get started.'),
      destroyed ? h('p', { class: 'muted' }, `${destroyed} destroyed VM${destroyed === 1 ? '' : 's'} not shown.`) : null,
    );
    replacePreserving(byId('vm-list'), next);
    renderDetached();
  }

  function renderVm(vmId) {
    const old = document.querySelector(`[data-vm-card="${CSS.escape(vmId)}"]`);
    const vm = state.vms.get(vmId);
    if (!old || !vm || vm.state === 'Destroyed') return renderAll();
    replacePreserving(old, vmCard(vm));
  }

  function renderDetached() {
    const vols = detachedVolumes();
    const next = h(
      'div',
      { id: 'detached-list', class: 'detached-list' },
      vols.length ? vols.map((v) => volumeSection(v, null)) : h('p', { class: 'muted' }, 'No detached volumes.'),
    );
    replacePreserving(byId('detached-list'), next);
  }

  function renderOwnerOf(s) {
    const vmId = vmIdOfSnapshot(s);
    if (vmId && document.querySelector(`[data-vm-card="${CSS.escape(vmId)}"]`)) renderVm(vmId);
    else if (state.volumes.get(s.volumeId)?.vmId === null) renderDetached();
    else renderAll();
  }

  function patchSnapshot(id) {
    const s = state.snapshots.get(id);
    const old = document.querySelector(`[data-snapshot-row="${CSS.escape(id)}"]`);
    if (!s) return old?.remove();
    if (!old) return renderOwnerOf(s);
    old.replaceWith(snapshotRow(s));
  }

  function vmCard(vm) {
    const allowed = state.allowed.get(vm.id);
    const decisions = new Map((allowed?.actions ?? []).map((a) => [a.action, a]));
    const decide = (action) => decisions.get(action) ?? { allowed: true, reason: null };
    const whyId = (action) => `vm-${vm.id}-why-${action}`;
    const refused = VM_LEVEL.filter((a) => !decide(a).allowed);
    const titleId = `vm-${vm.id}-title`;

    const button = (action, { key = action, type = 'button', body = { action }, danger = false } = {}) => {
      const d = decide(action);
      const busy = isBusy(vm.id, action);
      const el = h(
        'button',
        {
          type,
          class: ['btn', danger && 'btn-danger'],
          'data-key': `vm:${vm.id}:${key}`,
          disabled: !d.allowed,
          title: d.allowed ? undefined : d.reason,
          'aria-describedby': d.allowed ? undefined : whyId(action),
          'aria-busy': busy ? 'true' : undefined,
          'aria-disabled': busy ? 'true' : undefined,
        },
        ACTION_LABELS[action],
      );
      if (type === 'button') el.addEventListener('click', () => onAction(vm, body, el));
      return el;
    };

    const paramForm = (action, param, label, options) => {
      const d = decide(action);
      const selectId = `vm-${vm.id}-${action}-choice`;
      const submit = button(action, { type: 'submit' });
      return h(
        'form',
        {
          class: 'param-action',
          onsubmit: (ev) => {
            ev.preventDefault();
            const choice = ev.currentTarget.querySelector('select').value;
            if (choice) onAction(vm, { action, [param]: choice }, submit);
          },
        },
        h('label', { for: selectId }, label),
        h(
          'select',
          { id: selectId, 'data-key': `vm:${vm.id}:${action}:choice`, disabled: !d.allowed },
          options.map((o) => h('option', { value: o.id }, o.name)),
        ),
        submit,
      );
    };

    const { isos, offerings, hosts } = state.catalogs;
    const attachable = detachedVolumes().filter((v) => v.hypervisor === vm.hypervisor && v.state === 'Ready' && v.type === 'DATADISK');
    const otherHosts = hosts.filter((x) => x.hypervisor === vm.hypervisor && x.id !== vm.hostId);
    const otherOfferings = offerings.filter((o) => o.id !== vm.serviceOfferingId);
    const running = vm.state === 'Running';

    return h(
      'article',
      { class: 'vm card', 'data-vm-card': vm.id, 'aria-labelledby': titleId },
      h(
        'header',
        { class: 'vm-head' },
        h('h3', { id: titleId, tabindex: '-1' }, vm.name),
        h('span', { class: ['badge', `vm-${vm.state}`] }, vm.state),
        h(
          'dl',
          { class: 'facts' },
          isAdmin() ? fact('Account', accountName(vm.accountId)) : null,
          fact('Hypervisor', vm.hypervisor),
          fact('Offering', nameOf(offerings, vm.serviceOfferingId) ?? '—'),
          fact('Host', nameOf(hosts, vm.hostId) ?? '—'),
          vm.accelerator ? fact('Accelerator', vm.accelerator === 'kvm' ? 'KVM' : 'TCG (emulated)') : null,
          fact('ISO', vm.isoId ? nameOf(isos, vm.isoId) ?? vm.isoId : 'none'),
          vm.lastError ? fact('Last error', vm.lastError) : null,
        ),
      ),
      h(
        'div',
        { class: 'actions', role: 'group', 'aria-label': `Actions for VM ${vm.name}` },
        h(
          'div',
          { class: 'toolbar' },
          running ? button('stop', { key: 'power' }) : button('start', { key: 'power' }),
          running ? button('reboot') : null,
          button('reinstall'),
          button('destroy', { danger: true }),
          vm.isoId ? button('detach-iso') : null,
          volumesOfVm(vm.id).length > 1
            ? h(
                'button',
                {
                  type: 'button',
                  class: 'btn',
                  'data-key': `vm:${vm.id}:snapshot-all`,
                  title: 'Every disk of the VM at one instant, each snapshot backed up on its own',
                  'aria-busy': isBusy(vm.id, 'snapshot-all') ? 'true' : undefined,
                  onclick: (e) => onSnapshotAll(vm, e.currentTarget),
                },
                'Snapshot all disks',
              )
            : null,
        ),
        h(
          'div',
          { class: 'param-actions' },
          vm.isoId || !isos.length ? null : paramForm('attach-iso', 'isoId', 'ISO', isos),
          attachable.length ? paramForm('attach-volume', 'volumeId', 'Disk', attachable.map((v) => ({ id: v.id, name: `${v.name} (${formatBytes(v.sizeBytes)})` }))) : null,
          otherOfferings.length ? paramForm('change-service-offering', 'serviceOfferingId', 'Offering', otherOfferings.map((o) => ({ id: o.id, name: `${o.name} (${o.cpuCount} CPU, ${o.memoryMb} MB)` }))) : null,
          otherHosts.length ? paramForm('migrate', 'hostId', 'Host', otherHosts) : null,
        ),
        refused.length
          ? h(
              'div',
              { class: 'reasons' },
              h('p', { class: 'reasons-title' }, 'Unavailable while a backup is in progress:'),
              h('ul', {}, refused.map((a) => h('li', { id: whyId(a) }, h('strong', {}, ACTION_LABELS[a]), ': ', readable(decide(a))))),
            )
          : // The same box, at rest: the layout does not jump when a backup starts.
            h('div', { class: 'reasons reasons-idle' }, h('p', { class: 'muted' }, 'Every action is available.')),
      ),
      h('div', { class: 'volumes' }, volumesOfVm(vm.id).map((v) => volumeSection(v, vm, decide('detach-volume'), allowed))),
      isAdmin() && vm.hypervisor === 'KVM' ? consolePanel(vm) : null,
    );
  }

  function volumeSection(vol, vm, detachDecision, allowed) {
    const titleId = `vol-${vol.id}-title`;
    const snaps = snapshotsOfVolume(vol.id);
    const backingUp = allowed?.inFlightSnapshots.some((s) => s.volumeId === vol.id) ?? false;
    let detach = null;
    let why = null;
    if (vm && vol.type === 'DATADISK') {
      const blocked = detachDecision && !detachDecision.allowed && (detachDecision.volumeId === vol.id || backingUp);
      const whyId = `vol-${vol.id}-why-detach`;
      const reason = blocked
        ? detachDecision.volumeId === vol.id
          ? readable(detachDecision)
          : `Detach disk is not allowed while a snapshot of volume "${vol.name}" is being backed up`
        : null;
      detach = h(
        'button',
        {
          type: 'button',
          class: 'btn',
          'data-key': `vol:${vol.id}:detach`,
          disabled: blocked,
          title: reason ?? undefined,
          'aria-describedby': reason ? whyId : undefined,
          'aria-label': `Detach disk ${vol.name}`,
        },
        'Detach',
      );
      detach.addEventListener('click', () => onAction(vm, { action: 'detach-volume', volumeId: vol.id }, detach));
      if (reason) why = h('p', { id: whyId, class: 'reason' }, h('strong', {}, 'Detach disk'), ': ', reason);
    }
    const take = h('button', { type: 'button', class: 'btn btn-primary', 'data-key': `vol:${vol.id}:snapshot` }, 'Take snapshot');
    take.addEventListener('click', () => onTakeSnapshot(vol, take));
    return h(
      'section',
      { class: 'volume', 'aria-labelledby': titleId, 'data-volume': vol.id },
      h(
        'div',
        { class: 'volume-head' },
        h('h4', { id: titleId }, vol.name),
        h('span', { class: 'badge' }, vol.type),
        h('span', { class: 'muted' }, `${formatBytes(vol.sizeBytes)} ${vol.format}`),
        h('span', { class: 'volume-buttons' }, take, detach),
      ),
      vol.path ? h('p', { class: 'path' }, h('span', { class: 'visually-hidden' }, 'Path on primary storage: '), h('code', {}, vol.path)) : null,
      why,
      snaps.length
        ? h('ul', { class: 'snapshots', 'aria-label': `Snapshots of ${vol.name}` }, snaps.map(snapshotRow))
        : h('p', { class: 'muted no-snapshots' }, 'No snapshots yet.'),
    );
  }

  return { renderAll, renderVm, renderDetached, renderOwnerOf, patchSnapshot, snapshotChanged: (s) => s && onSnapshotChanged(s) };
}

/**
 * The API's reason with the snapshot and volume ids it names replaced by their names, when the page knows
 * them ("snapshot "nightly" of volume "web-1-ROOT"" reads better than two UUIDs). The title keeps the ids.
 */
function readable(decision) {
  let text = decision.reason ?? 'not allowed now';
  const snap = decision.snapshotId ? state.snapshots.get(decision.snapshotId) : undefined;
  const vol = decision.volumeId ? state.volumes.get(decision.volumeId) : undefined;
  if (snap) text = text.split(decision.snapshotId).join(`"${snap.name}"`);
  if (vol) text = text.split(decision.volumeId).join(`"${vol.name}"`);
  return text;
}

function fact(term, value) {
  return h('div', {}, h('dt', {}, term), h('dd', {}, value));
}

/** One snapshot: state, and while it is in flight its progress, attempt and next retry. */
export function snapshotRow(s) {
  const b = s.backup;
  const nameId = `snap-${s.id}-name`;
  return h(
    'li',
    { class: ['snapshot', `is-${s.state}`], 'data-snapshot-row': s.id, 'aria-labelledby': nameId },
    h(
      'div',
      { class: 'snap-head' },
      h('a', { class: 'snap-name', id: nameId, href: `#/snapshots/${s.id}`, 'data-key': `snaplink:${s.id}` }, s.name),
      h('span', { class: ['state', `state-${s.state}`] }, s.state),
      h('span', { class: 'muted' }, s.asyncBackup ? 'asynchronous backup' : 'synchronous backup'),
      h('time', { class: 'muted', datetime: s.createdAt }, formatDateTime(s.createdAt)),
    ),
    isInFlight(s) ? progressBlock(s) : null,
    s.state === 'BackedUp' ? h('p', { class: 'muted snap-detail' }, backedUpText(s), backupKindText(s.backup)) : null,
    s.state === 'Error' ? errorText('Failed', b.lastError ?? 'no reason recorded') : null,
  );
}

/** "Backed up: 196 KiB written (disk 1.0 GiB virtual) on attempt 1 of 3." */
function backedUpText(s) {
  const b = s.backup;
  const image = s.storeRefs?.find((r) => r.role === 'Image' && r.state !== 'Destroyed');
  const written = image?.sizeBytes;
  return `Backed up: ${written == null ? 'size unknown' : `${formatBytes(written)} written`} (disk ${formatBytes(b.bytesTotal)} virtual) on attempt ${b.attempts} of ${b.maxAttempts}.`;
}

/** " Incremental: 8 MiB written on the backup of …, chain of 3." — what the backup is (docs/design.md §14). */
function backupKindText(b) {
  if (!b.kind) return null;
  const written = b.bytesWritten != null ? `${formatBytes(b.bytesWritten)} written` : '';
  const text =
    b.kind === 'incremental'
      ? ` Incremental: ${written} on the backup of ${b.parentSnapshotId ? b.parentSnapshotId.slice(0, 8) : '?'}…, chain of ${b.chainLength}.`
      : ` Full: ${written}.`;
  return h('span', { class: 'backup-kind', 'data-backup-kind': b.kind, title: b.parentSnapshotId ?? '' }, text);
}


/** An error line, always whole (the cause is at the end of long ones): it wraps rather than being cut. */
function errorText(label, message) {
  return h('p', { class: 'snap-error' }, `${label}: ${message}`);
}

function progressBlock(s) {
  const b = s.backup;
  const determinate = s.state === 'BackingUp' && b.bytesTotal > 0;
  const text =
    s.state === 'BackingUp'
      ? determinate
        ? `${formatBytes(b.bytesDone)} of ${formatBytes(b.bytesTotal)} (${percent(b.bytesDone, b.bytesTotal)}%)`
        : 'starting…'
      : s.state === 'CreatedOnPrimary'
        ? 'created on primary storage; the backup starts soon'
        : 'creating on primary storage…';
  const bar = h('progress', {
    'aria-label': `Backup progress of ${s.name}`,
    'aria-valuetext': text,
    ...(determinate ? { max: b.bytesTotal, value: b.bytesDone } : {}),
  });
  return h(
    'div',
    { class: 'snap-progress' },
    h('div', { class: 'progress-line' }, bar, h('span', { class: 'progress-text' }, text)),
    h(
      'p',
      { class: 'snap-detail' },
      b.attempts > 0 ? h('span', { class: 'attempt' }, `attempt ${b.attempts} of ${b.maxAttempts}`) : null,
      s.state === 'BackingUp' && b.kind
        ? h('span', { class: 'backup-kind', 'data-backup-kind': b.kind }, b.kind === 'incremental' ? ' incremental (only what changed is written)' : ' full copy')
        : null,
      b.nextAttemptAt
        ? h(
            'span',
            { class: 'retry' },
            'next retry at ',
            h('time', { datetime: b.nextAttemptAt }, formatTime(b.nextAttemptAt)),
            ' (',
            h('span', { 'data-countdown': b.nextAttemptAt }, formatCountdown(b.nextAttemptAt)),
            ')',
          )
        : null,
    ),
    b.lastError ? errorText('Last attempt failed', b.lastError) : null,
  );
}
