import { focusNearest } from './dom.js';
import { ACTION_LABELS } from './render.js';
import { state } from './store.js';
import { toast } from './toasts.js';
import { explain } from './errors.js';

const DONE = {
  start: 'started',
  stop: 'stopped',
  reboot: 'rebooted',
  destroy: 'destroyed',
  reinstall: 'reinstalled with a fresh ROOT disk',
  'attach-iso': 'ISO attached',
  'detach-iso': 'ISO detached',
  'attach-volume': 'disk attached',
  'detach-volume': 'disk detached',
  'change-service-offering': 'service offering changed',
  migrate: 'migrated',
};

/** Runs VM actions: one at a time per VM and action, with a confirmation for the destructive ones. */
export function createActions(ctx) {
  const running = new Set();

  async function run(vm, body, button) {
    const key = `${vm.id}:${body.action}`;
    if (running.has(key) || button?.getAttribute('aria-disabled') === 'true') return;
    if (body.action === 'destroy' && !window.confirm(`Destroy VM ${vm.name}? Its ROOT disk is deleted; data disks are detached.`)) return;
    if (body.action === 'reinstall' && !window.confirm(`Reinstall VM ${vm.name}? Its ROOT disk is replaced by a fresh one.`)) return;
    running.add(key);
    button?.setAttribute('aria-busy', 'true');
    button?.setAttribute('aria-disabled', 'true');
    try {
      const updated = await ctx.api.vmAction(vm.id, body);
      state.vms.set(updated.id, updated);
      toast(`VM ${vm.name}: ${DONE[body.action] ?? 'done'}.`, { kind: 'success' });
      if (body.action === 'destroy') focusNearest(document.getElementById('vms-section'));
    } catch (err) {
      const { sentence, detail } = explain(err);
      toast(`VM ${vm.name}: ${ACTION_LABELS[body.action] ?? body.action} failed. ${sentence}`, { kind: 'error', detail });
    } finally {
      running.delete(key);
      button?.removeAttribute('aria-busy');
      button?.removeAttribute('aria-disabled');
      await ctx.live?.refreshAll();
    }
  }

  /** Snapshots every disk of the VM at one instant (asynchronous backups); the snapshots arrive live. */
  async function snapshotAll(vm, button) {
    const key = `${vm.id}:snapshot-all`;
    if (running.has(key)) return;
    running.add(key);
    button?.setAttribute('aria-busy', 'true');
    button?.setAttribute('aria-disabled', 'true');
    try {
      const taken = await ctx.api.snapshotVm(vm.id, { asyncBackup: true });
      const how = taken.instant === 'live' ? "at one instant by the VM's QEMU" : 'one after the other (nothing writes to them)';
      toast(`VM ${vm.name}: ${taken.snapshots.length} disk snapshot${taken.snapshots.length === 1 ? '' : 's'} taken ${how}; backing up.`, { kind: 'success' });
    } catch (err) {
      const { sentence, detail } = explain(err);
      toast(`VM ${vm.name}: snapshot of all disks failed. ${sentence}`, { kind: 'error', detail });
    } finally {
      running.delete(key);
      button?.removeAttribute('aria-busy');
      button?.removeAttribute('aria-disabled');
      await ctx.live?.refreshAll();
    }
  }

  return { run, snapshotAll, isBusy: (vmId, action) => running.has(`${vmId}:${action}`) };
}
