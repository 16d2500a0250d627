import { readFileSync } from 'node:fs';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import type { Env } from '../config/env.js';

/** TLS options from the environment (mTLS when a client cert is given), or undefined for plaintext. */
function tlsFrom(env: Env) {
  const { TEMPORAL_TLS_CERT_PATH: cert, TEMPORAL_TLS_KEY_PATH: key, TEMPORAL_TLS_CA_PATH: ca } = env;
  if (!cert && !ca && !env.TEMPORAL_API_KEY) return undefined;
  return {
    ...(env.TEMPORAL_TLS_SERVER_NAME ? { serverNameOverride: env.TEMPORAL_TLS_SERVER_NAME } : {}),
    ...(ca ? { serverRootCACertificate: readFileSync(ca) } : {}),
    ...(cert && key ? { clientCertPair: { crt: readFileSync(cert), key: readFileSync(key) } } : {}),
  };
}

export interface TemporalTarget {
  address: string;
  namespace: string;
}

/**
 * gRPC reconnect backoff of the client channel. grpc-js grows it by 1.6× per failed connect up to 120 s by default:
 * after a minute-long frontend outage an API process would keep refusing requests (503) for up to two minutes
 * after the frontend is back. Capped at 5 s, it reconnects within seconds (test/cluster/cluster.test.ts).
 */
export const CLIENT_RECONNECT_CHANNEL_ARGS = {
  'grpc.initial_reconnect_backoff_ms': 500,
  'grpc.max_reconnect_backoff_ms': 5_000,
} as const;

/** A client for starting, updating and querying workflows. */
export async function connectClient(env: Env, target: TemporalTarget): Promise<{ client: Client; connection: Connection }> {
  const tls = tlsFrom(env);
  const connection = await Connection.connect({
    address: target.address,
    channelArgs: CLIENT_RECONNECT_CHANNEL_ARGS,
    ...(tls ? { tls } : {}),
    ...(env.TEMPORAL_API_KEY ? { apiKey: env.TEMPORAL_API_KEY } : {}),
  });
  return { client: new Client({ connection, namespace: target.namespace }), connection };
}

/** A native connection for workers. */
export async function connectWorker(env: Env, target: TemporalTarget): Promise<NativeConnection> {
  const tls = tlsFrom(env);
  return NativeConnection.connect({
    address: target.address,
    ...(tls ? { tls } : {}),
    ...(env.TEMPORAL_API_KEY ? { apiKey: env.TEMPORAL_API_KEY } : {}),
  });
}
