import { byId, h } from './dom.js';
import { state } from './store.js';
import { toast } from './toasts.js';
import { explainText } from './errors.js';

const MiB = 1024 * 1024;

/** The "Create VM" form: a name, the hypervisor, an offering and disk sizes in MiB. */
export function createVmForm(ctx) {
  const form = byId('create-vm-form');
  const errorBox = byId('create-vm-error');
  const submit = byId('create-vm-submit');
  const hypervisor = byId('vm-hypervisor');
  const offering = byId('vm-offering');

  /** Fills the selects from the catalogs (hypervisors that have a host; every offering). */
  function fillChoices() {
    const hypervisors = [...new Set(state.catalogs.hosts.map((x) => x.hypervisor))].sort();
    const current = hypervisor.value;
    hypervisor.replaceChildren(...(hypervisors.length ? hypervisors : ['KVM']).map((name) => h('option', { value: name }, name)));
    if ([...hypervisor.options].some((o) => o.value === current)) hypervisor.value = current;
    else if (hypervisors.includes('KVM')) hypervisor.value = 'KVM';
    offering.replaceChildren(
      ...state.catalogs.offerings.map((o) => h('option', { value: o.id }, `${o.name} (${o.cpuCount} CPU, ${o.memoryMb} MB)`)),
    );
  }

  const sizeOf = (id, label, required) => {
    const raw = byId(id).value.trim();
    if (!raw && !required) return undefined;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${label} must be a whole number of MiB, at least 1`);
    return n * MiB;
  };

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    errorBox.textContent = '';
    let body;
    try {
      const dataDisk = sizeOf('vm-data-size', 'Data disk size', false);
      body = {
        name: byId('vm-name').value.trim(),
        hypervisor: hypervisor.value,
        rootDiskSizeBytes: sizeOf('vm-root-size', 'Root disk size', true),
        ...(offering.value ? { serviceOffering: offering.value } : {}),
        ...(dataDisk ? { dataDisks: [{ sizeBytes: dataDisk }] } : {}),
      };
      if (!body.name) throw new Error('Name must not be empty');
    } catch (err) {
      errorBox.textContent = err.message;
      return;
    }
    submit.disabled = true;
    form.setAttribute('aria-busy', 'true');
    try {
      const vm = await ctx.api.createVm(body);
      state.vms.set(vm.id, vm);
      toast(`VM ${vm.name} created.`, { kind: 'success' });
      byId('vm-name').value = '';
      byId('vm-data-size').value = '';
      await ctx.live?.refreshAll();
    } catch (err) {
      errorBox.textContent = explainText(err);
    } finally {
      submit.disabled = false;
      form.setAttribute('aria-busy', 'false');
    }
  });

  return { fillChoices };
}
