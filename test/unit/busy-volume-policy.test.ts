import { describe, expect, it } from 'vitest';
import { decideBusy, type BusyVolume } from '../../domain/policy.js';

const root: BusyVolume = { volumeId: 'r', state: 'Migrating', volumeType: 'ROOT', vmId: 'm' };
const data: BusyVolume = { volumeId: 'd', state: 'Resizing', volumeType: 'DATADISK', vmId: 'm' };
const fresh: BusyVolume = { volumeId: 'n', state: 'Creating', volumeType: 'DATADISK', vmId: null, sourceSnapshotId: 's' };

describe('busy volume policy', () => {
  it('lets the VM run (start/stop/reboot) but keeps everything off the busy disk', () => {
    for (const action of ['start', 'stop', 'reboot', 'attach-iso', 'detach-iso', 'change-service-offering'] as const) {
      expect(decideBusy({ kind: 'vm', action, vmId: 'm' }, [root, data]).allowed, action).toBe(true);
    }
    expect(decideBusy({ kind: 'vm', action: 'destroy', vmId: 'm' }, [root])).toMatchObject({ allowed: false, volumeId: 'r', state: 'Migrating' });
    expect(decideBusy({ kind: 'vm', action: 'destroy', vmId: 'm' }, [data]).allowed).toBe(true);
    expect(decideBusy({ kind: 'vm', action: 'migrate', vmId: 'm' }, [data]).allowed).toBe(false);
    expect(decideBusy({ kind: 'vm', action: 'detach-volume', vmId: 'm', volumeId: 'd' }, [data]).allowed).toBe(false);
    expect(decideBusy({ kind: 'vm', action: 'attach-volume', vmId: 'x', volumeId: 'n' }, [fresh]).allowed).toBe(false);
    expect(decideBusy({ kind: 'vm', action: 'reboot', vmId: 'other' }, [root]).allowed).toBe(true);
  });

  it('refuses every action on the busy volume and deleting a snapshot being copied into a new volume', () => {
    for (const action of ['snapshot', 'resize', 'migrate', 'delete', 'revert'] as const) {
      expect(decideBusy({ kind: 'volume', action, volumeId: 'd' }, [data]).allowed, action).toBe(false);
      expect(decideBusy({ kind: 'volume', action, volumeId: 'other' }, [data]).allowed, action).toBe(true);
    }
    expect(decideBusy({ kind: 'snapshot', action: 'delete', snapshotId: 's' }, [fresh], 'v').allowed).toBe(false);
    expect(decideBusy({ kind: 'snapshot', action: 'revert', snapshotId: 's' }, [fresh], 'v').allowed).toBe(true);
    expect(decideBusy({ kind: 'snapshot', action: 'create-volume', snapshotId: 's' }, [fresh], 'v').allowed).toBe(true);
    expect(decideBusy({ kind: 'snapshot', action: 'revert', snapshotId: 't' }, [root], 'r').allowed).toBe(false);
  });
});
