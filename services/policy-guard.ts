import { decide, decideBusy, type BusyVolume, type InFlightSnapshot, type Operation } from '../domain/policy.js';
import { OperationNotAllowedError, VolumeBusyError } from '../domain/errors.js';

/** Throws OperationNotAllowedError when the policy table refuses `op`. */
export function assertAllowed(op: Operation, inFlight: readonly InFlightSnapshot[]): void {
  const d = decide(op, inFlight);
  if (!d.allowed) throw new OperationNotAllowedError(d.reason, d.snapshotId, d.volumeId);
}

/** Throws VolumeBusyError (409 VOLUME_BUSY) when a busy volume conflicts with `op`. */
export function assertNotBusy(op: Operation, busy: readonly BusyVolume[], snapshotVolumeId?: string): void {
  const d = decideBusy(op, busy, snapshotVolumeId);
  if (!d.allowed) throw new VolumeBusyError(d.reason, d.volumeId, d.state);
}
