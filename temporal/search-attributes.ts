import type { Connection } from '@temporalio/client';
import proto from '@temporalio/proto';
import type { Logger } from 'pino';
import { SEARCH_ATTRIBUTES } from '../workflows/definitions.js';

/** The custom search attributes, as `--search-attribute` arguments for the dev server. */
export const DEV_SERVER_SEARCH_ATTRIBUTE_ARGS: string[] = Object.keys(SEARCH_ATTRIBUTES).flatMap((name) => [
  '--search-attribute',
  `${name}=Keyword`,
]);

/** Registers the search attributes through the operator API when the cluster lacks them. */
export async function ensureSearchAttributes(connection: Connection, namespace: string, logger?: Logger): Promise<string[]> {
  const existing = await connection.operatorService.listSearchAttributes({ namespace }).catch((err) => {
    // The time-skipping test server implements only AddSearchAttributes: treat the list as empty there.
    if (err?.code === 12 /* UNIMPLEMENTED */) return { customAttributes: {} };
    throw err;
  });
  const missing = Object.keys(SEARCH_ATTRIBUTES).filter((name) => !(name in (existing.customAttributes ?? {})));
  if (missing.length === 0) return [];
  const searchAttributes = Object.fromEntries(
    missing.map((name) => [name, proto.temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD]),
  );
  try {
    await connection.operatorService.addSearchAttributes({ namespace, searchAttributes });
  } catch (err) {
    // Another process registering at the same moment is fine.
    if (!/already exists/i.test(String(err))) throw err;
  }
  logger?.info({ added: missing, namespace }, 'registered search attributes');
  return missing;
}
