import type { Role } from '../db/accounts.js';

/** Who is asking: the account behind the API key. */
export interface Caller {
  accountId: string;
  role: Role;
  /** The API key the request was made with (bearer requests). */
  keyId?: string;
}

/** The account whose resources `caller` may see and touch; null means every account (an admin). */
export function ownerScope(caller: Caller): string | null {
  return caller.role === 'admin' ? null : caller.accountId;
}
