/** A VM action's event, as CloudStack names it (VM.START, VOLUME.ATTACH, ...). */
import { recordEvent } from '../db/events.js';
import type { Queryable } from '../db/pool.js';
import type { VmRecord } from '../db/vms.js';
import type { VmAction } from '../domain/policy.js';

/** CloudStack's event type for each VM action. */
export const VM_EVENT_TYPES: Record<VmAction, string> = {
  start: 'VM.START',
  stop: 'VM.STOP',
  reboot: 'VM.REBOOT',
  destroy: 'VM.DESTROY',
  reinstall: 'VM.RESTORE',
  'attach-iso': 'ISO.ATTACH',
  'detach-iso': 'ISO.DETACH',
  'attach-volume': 'VOLUME.ATTACH',
  'detach-volume': 'VOLUME.DETACH',
  'change-service-offering': 'VM.UPGRADE',
  migrate: 'VM.MIGRATE',
};

export async function recordVmEvent(
  db: Queryable,
  vm: Pick<VmRecord, 'id' | 'accountId'>,
  action: VmAction,
  description: string,
  details: Record<string, unknown> = {},
  level: 'INFO' | 'WARN' | 'ERROR' = 'INFO',
): Promise<void> {
  await recordEvent(db, {
    type: VM_EVENT_TYPES[action],
    level,
    accountId: vm.accountId,
    resourceType: 'VirtualMachine',
    resourceId: vm.id,
    description,
    details: { vmId: vm.id, action, ...details },
  });
}
