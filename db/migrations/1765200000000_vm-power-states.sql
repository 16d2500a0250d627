-- Up Migration

-- A KVM host is reached through its libvirt URI (docs/design.md §15); a host without one is known to the
-- catalog but not connected: VMs are not started on it.
ALTER TABLE hosts ADD COLUMN uri text;
-- What the host's VMs run under (kvm or qemu, i.e. TCG), as its accelerator probe found, and why.
ALTER TABLE hosts ADD COLUMN accelerator text;
ALTER TABLE hosts ADD COLUMN accelerator_reason text;

-- VM actions that reach the hypervisor are two-phase (as volume operations are): the transitional state is
-- committed before the libvirt call and the result after it; `state_since` dates the transitional state, so a
-- process that died in between is settled from libvirt's truth, and `last_error` keeps libvirt's text.
ALTER TABLE virtual_machines DROP CONSTRAINT virtual_machines_state_check;
ALTER TABLE virtual_machines ADD CONSTRAINT virtual_machines_state_check
  CHECK (state IN ('Starting', 'Running', 'Stopping', 'Stopped', 'Destroyed'));
ALTER TABLE virtual_machines ADD COLUMN state_since timestamptz NOT NULL DEFAULT now();
ALTER TABLE virtual_machines ADD COLUMN last_error text;
-- The accelerator its domain last started with.
ALTER TABLE virtual_machines ADD COLUMN accelerator text;
CREATE INDEX virtual_machines_transitional_idx ON virtual_machines(state_since) WHERE state IN ('Starting', 'Stopping');
-- A hot-plug in flight on a running VM ({op: attach|detach, volumeId, target}): the sync leaves the VM's disks
-- alone while it is fresh, and settles a stale one from the domain's disks.
ALTER TABLE virtual_machines ADD COLUMN pending_disk jsonb;
ALTER TABLE virtual_machines ADD COLUMN pending_disk_since timestamptz;

-- Down Migration

ALTER TABLE virtual_machines DROP COLUMN pending_disk_since;
ALTER TABLE virtual_machines DROP COLUMN pending_disk;
DROP INDEX virtual_machines_transitional_idx;
UPDATE virtual_machines SET state = 'Stopped' WHERE state IN ('Starting', 'Stopping');
ALTER TABLE virtual_machines DROP COLUMN accelerator;
ALTER TABLE virtual_machines DROP COLUMN last_error;
ALTER TABLE virtual_machines DROP COLUMN state_since;
ALTER TABLE virtual_machines DROP CONSTRAINT virtual_machines_state_check;
ALTER TABLE virtual_machines ADD CONSTRAINT virtual_machines_state_check CHECK (state IN ('Running', 'Stopped', 'Destroyed'));
ALTER TABLE hosts DROP COLUMN accelerator_reason;
ALTER TABLE hosts DROP COLUMN accelerator;
ALTER TABLE hosts DROP COLUMN uri;
