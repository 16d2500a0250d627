import { ZodError } from 'zod';
import { ConflictError, NotFoundError, ServiceUnavailableError, SnapshotCreationFailedError, ValidationError, publicErrorMessage } from '../../domain/errors.js';
import { IllegalSnapshotTransitionError } from '../../domain/snapshot-states.js';
import { ImageBusyError } from '../../storage/common.js';

/** CloudStack's ApiErrorCode values: the `errorcode` of an error response and its HTTP status. */
export const ApiErrorCode = {
  UNAUTHORIZED: 401,
  API_LIMIT_EXCEED: 429,
  PARAM_ERROR: 431,
  UNSUPPORTED_ACTION_ERROR: 432,
  INTERNAL_ERROR: 530,
  ACCOUNT_ERROR: 531,
  RESOURCE_UNAVAILABLE_ERROR: 534,
  RESOURCE_IN_USE_ERROR: 536,
} as const;

/** CloudStack's CSExceptionErrorCode values (`cserrorcode`): which Java exception it would have been. */
export const CsErrorCode = {
  CloudRuntimeException: 4250,
  InvalidParameterValueException: 4350,
  PermissionDeniedException: 4365,
  ResourceInUseException: 4375,
  ResourceUnavailableException: 4380,
  ServerApiException: 9999,
} as const;

/** An id the error is about, as CloudStack's ExceptionProxyObject serializes it. */
export interface UuidRef {
  uuid: string;
  description: string;
}

/** An error as the CloudStack dialect answers it. */
export class CloudStackError extends Error {
  override readonly name = 'CloudStackError';
  constructor(
    readonly errorCode: number,
    readonly csErrorCode: number,
    message: string,
    readonly uuidList: UuidRef[] = [],
  ) {
    super(message);
  }

  /** `{errorcode, cserrorcode, errortext, uuidList}`, the body of `<command>response` or of a failed job's `jobresult`. */
  toBody(): { uuidList: UuidRef[]; errorcode: number; cserrorcode: number; errortext: string } {
    return { uuidList: this.uuidList, errorcode: this.errorCode, cserrorcode: this.csErrorCode, errortext: this.message };
  }
}

export const unauthorized = (text = 'unable to verify user credentials and/or request signature') =>
  new CloudStackError(ApiErrorCode.UNAUTHORIZED, CsErrorCode.ServerApiException, text);

export const paramError = (text: string) => new CloudStackError(ApiErrorCode.PARAM_ERROR, CsErrorCode.InvalidParameterValueException, text);

/**
 * Well-known CloudStack commands volsnap does not serve (yet): asked for one, the 432 says so after CloudStack's
 * own text, so that a client author knows it is not a typo. Not the whole of CloudStack's ~700 commands: the
 * ones a snapshot, VM or volume workflow most often reaches for. Anything else gets CloudStack's text alone.
 */
export const KNOWN_UNSERVED_COMMANDS: readonly string[] = [
  // snapshots and their policies, VM snapshots
  'createSnapshotPolicy', 'listSnapshotPolicies', 'updateSnapshotPolicy', 'deleteSnapshotPolicies', 'archiveSnapshot',
  'createSnapshotFromVMSnapshot', 'extractSnapshot', 'copySnapshot', 'createVMSnapshot', 'listVMSnapshot', 'revertToVMSnapshot', 'deleteVMSnapshot',
  // VMs
  'updateVirtualMachine', 'scaleVirtualMachine', 'recoverVirtualMachine', 'expungeVirtualMachine', 'assignVirtualMachine',
  'resetPasswordForVirtualMachine', 'getVMPassword', 'resetSSHKeyForVirtualMachine', 'migrateVirtualMachineWithVolume',
  'addNicToVirtualMachine', 'removeNicFromVirtualMachine', 'listNics', 'listVirtualMachinesMetrics',
  // volumes, templates, ISOs
  'updateVolume', 'extractVolume', 'uploadVolume', 'recoverVolume', 'listVolumesMetrics', 'createTemplate', 'registerTemplate',
  'deleteTemplate', 'copyTemplate', 'updateTemplate', 'extractTemplate', 'registerIso', 'deleteIso', 'copyIso', 'listOsTypes',
  // tags, accounts, users, keys
  'createTags', 'deleteTags', 'listTags', 'createAccount', 'deleteAccount', 'updateAccount', 'disableAccount', 'enableAccount',
  'listUsers', 'createUser', 'deleteUser', 'listDomains', 'createDomain', 'listProjects', 'listResourceLimits', 'listSSHKeyPairs',
  'createSSHKeyPair', 'registerSSHKeyPair', 'deleteSSHKeyPair',
  // networking
  'listNetworks', 'createNetwork', 'deleteNetwork', 'listNetworkOfferings', 'associateIpAddress', 'disassociateIpAddress',
  'listPublicIpAddresses', 'createFirewallRule', 'createPortForwardingRule', 'createLoadBalancerRule', 'listSecurityGroups',
  'createSecurityGroup', 'authorizeSecurityGroupIngress', 'listRouters',
  // infrastructure
  'listPods', 'listClusters', 'listImageStores', 'listSystemVms', 'listRegions', 'listCapacity', 'listAlerts',
];
const UNSERVED = new Set(KNOWN_UNSERVED_COMMANDS.map((c) => c.toLowerCase()));

/**
 * 432 as CloudStack answers it. For a command CloudStack has and volsnap does not serve, the text says so
 * (`hint` false: an admin-only command asked by a user keeps CloudStack's text alone, as CloudStack's
 * role checker does, so that a user does not learn which admin commands exist).
 */
export const unknownCommand = (command: string, { hint = true }: { hint?: boolean } = {}) =>
  new CloudStackError(
    ApiErrorCode.UNSUPPORTED_ACTION_ERROR,
    CsErrorCode.ServerApiException,
    `The given command:${command} does not exist or it is not available for user` +
      (hint && UNSERVED.has(command.toLowerCase())
        ? `; ${command} is a CloudStack command that volsnap does not serve (listApis lists the commands it does; docs/cloudstack.md)`
        : ''),
  );

/** The ids a domain error names (its details' `...Id` entries), as CloudStack's uuidList. */
function uuidsOf(details: Record<string, unknown>): UuidRef[] {
  return Object.entries(details)
    .filter(([k, v]) => /Id$/.test(k) && typeof v === 'string')
    .map(([k, v]) => ({ uuid: v as string, description: k }));
}

/** Codes of conflicts that mean "something else holds the resource now" (CloudStack's ResourceInUse). */
const IN_USE = new Set(['OPERATION_NOT_ALLOWED_DURING_BACKUP', 'VOLUME_BUSY', 'VOLUME_ATTACHED', 'ISO_ALREADY_ATTACHED', 'IMAGE_BUSY']);

const PG_BAD_INPUT = new Set(['22P02', '22003', '22001', '22007', '22008']);

/**
 * Maps what a service threw to CloudStack's error: not found (also another account's resource) and bad values
 * 431, policy refusals and busy resources 536 naming the snapshot and the volume as the REST 409 does, other
 * state conflicts 530, an unavailable dependency 534; anything unexpected is 530 "internal error"
 * (`unexpected`, for the log).
 */
export function toCloudStackError(err: unknown): { error: CloudStackError; unexpected: boolean } {
  const ok = (error: CloudStackError) => ({ error, unexpected: false });
  if (err instanceof CloudStackError) return ok(err);
  if (err instanceof NotFoundError) {
    return ok(new CloudStackError(ApiErrorCode.PARAM_ERROR, CsErrorCode.InvalidParameterValueException, `Unable to find ${err.resource} with specified id ${err.id}`, [{ uuid: err.id, description: `${err.resource}Id` }]));
  }
  if (err instanceof ValidationError) {
    const fields = Object.entries(err.fields).map(([k, v]) => `${k}: ${v}`).join('; ');
    return ok(paramError(fields && !err.message.includes(fields) ? `${err.message} (${fields})` : err.message));
  }
  if (err instanceof ZodError) return ok(paramError(err.issues.map((i) => `${i.path.join('.') || 'value'}: ${i.message}`).join('; ')));
  if (err instanceof ConflictError) {
    const inUse = IN_USE.has(err.code);
    return ok(
      new CloudStackError(
        inUse ? ApiErrorCode.RESOURCE_IN_USE_ERROR : ApiErrorCode.INTERNAL_ERROR,
        inUse ? CsErrorCode.ResourceInUseException : CsErrorCode.CloudRuntimeException,
        publicErrorMessage(err.message),
        uuidsOf(err.details),
      ),
    );
  }
  if (err instanceof ImageBusyError) return ok(new CloudStackError(ApiErrorCode.RESOURCE_IN_USE_ERROR, CsErrorCode.ResourceInUseException, publicErrorMessage(err.message)));
  if (err instanceof SnapshotCreationFailedError) {
    const reason = publicErrorMessage(err.message);
    const text = /primary storage/.test(reason) ? reason : `creating the snapshot on primary storage failed: ${reason}`;
    return ok(new CloudStackError(ApiErrorCode.INTERNAL_ERROR, CsErrorCode.CloudRuntimeException, text, [{ uuid: err.snapshotId, description: 'snapshotId' }]));
  }
  if (err instanceof IllegalSnapshotTransitionError) {
    return ok(new CloudStackError(ApiErrorCode.INTERNAL_ERROR, CsErrorCode.CloudRuntimeException, err.message, [{ uuid: err.snapshotId, description: 'snapshotId' }]));
  }
  if (err instanceof ServiceUnavailableError) {
    return ok(new CloudStackError(ApiErrorCode.RESOURCE_UNAVAILABLE_ERROR, CsErrorCode.ResourceUnavailableException, err.message, uuidsOf(err.details)));
  }
  const sqlState = (err as { code?: unknown } | null)?.code;
  if (typeof sqlState === 'string' && PG_BAD_INPUT.has(sqlState)) return ok(paramError('a value in the request is out of range or malformed'));
  return { error: new CloudStackError(ApiErrorCode.INTERNAL_ERROR, CsErrorCode.ServerApiException, 'internal error'), unexpected: true };
}
