/**
 * SIMULATOR ONLY: a XenAPI host for tests, never part of the product. It speaks XenAPI's JSON-RPC v2.0 on
 * POST /jsonrpc (errors as {"code":1,"message":<XenAPI error code>,"data":[params]}), serves the HTTP handlers
 * GET /export_raw_vdi and PUT /import_raw_vdi, and keeps every VDI as a real raw file `<dir>/<sr-uuid>/<vdi-uuid>.raw`
 * (VHD goes in and out through `qemu-img`, which calls the format `vpc`). Records live in memory only.
 *
 * Run: `tsx test/support/xenapi-simulator.ts --port 0 --dir <dir> [--sr <uuid>]... [--username root]`; the
 * password comes from XENAPI_SIM_PASSWORD (default `xenroot`) so it never shows in `ps`. Prints one JSON line
 * `{"url": ..., "srs": [...]}` on stdout once listening. `/_sim/*` is a simulator-only admin API (fault injection,
 * counters) that no real XenServer has.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { constants as fsc, createReadStream, createWriteStream } from 'node:fs';
import { copyFile, mkdir, open, rm, truncate } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { parseArgs } from 'node:util';

const exec = promisify(execFile);
const NULL_REF = 'OpaqueRef:NULL';

/** A XenAPI failure: code plus string params, exactly what goes on the wire. */
class Failure extends Error {
  constructor(readonly code: string, readonly params: string[] = []) {
    super(code);
  }
}

/** Fault injection knobs (simulator-only; set through POST /_sim/faults). */
interface Faults {
  /** After this many export bytes (counted from when the fault is set) every session is invalidated; 0 = at the next export request. */
  expireSessionsAfterBytes?: number | null;
  /** With expireSessionsAfterBytes: also cut the export connection when the sessions expire (a toolstack restart). */
  dropConnectionOnExpiry?: boolean;
  /** The next n exports fail with VDI_IO_ERROR after sending failExportAfterBytes bytes (then the connection is cut). */
  failNextExports?: number;
  failExportAfterBytes?: number;
  /** The next n imports fail with VDI_IO_ERROR after the body was received. */
  failNextImports?: number;
  /** Send Content-Length on exports (real xapi streams without one). */
  exportContentLength?: boolean;
  /** Throttles exports, so tests can act while one is running. */
  exportBytesPerSec?: number | null;
  /** VDI uuids treated as attached to a running VM: destroy/resize answer VDI_IN_USE. */
  attachedVdis?: string[];
}

interface Session {
  ref: string;
  uuid: string;
  valid: boolean;
}

interface Sr {
  ref: string;
  uuid: string;
  name_label: string;
}

interface Vdi {
  ref: string;
  uuid: string;
  name_label: string;
  name_description: string;
  SR: string;
  virtual_size: number;
  type: string;
  sharable: boolean;
  read_only: boolean;
  other_config: Record<string, string>;
  xenstore_data: Record<string, string>;
  sm_config: Record<string, string>;
  tags: string[];
  is_a_snapshot: boolean;
  snapshot_of: string;
  snapshots: string[];
  snapshot_time: string;
}

interface Task {
  ref: string;
  uuid: string;
  name_label: string;
  name_description: string;
  status: 'pending' | 'success' | 'failure' | 'cancelling' | 'cancelled';
  progress: number;
  result: string;
  error_info: string[];
  created: string;
  finished: string;
}

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    host: { type: 'string', default: '127.0.0.1' },
    dir: { type: 'string' },
    sr: { type: 'string', multiple: true },
    username: { type: 'string', default: 'root' },
  },
});
if (!args.dir) {
  process.stderr.write('usage: xenapi-simulator --dir <dir> [--port 0] [--sr <uuid>]... [--username root]\n');
  process.exit(2);
}
const dir = path.resolve(args.dir);
const username = args.username!;
const password = process.env.XENAPI_SIM_PASSWORD ?? 'xenroot';

const sessions = new Map<string, Session>();
const srs = new Map<string, Sr>();
const vdis = new Map<string, Vdi>();
const tasks = new Map<string, Task>();
/** VDIs with an export, import or copy running (real xapi holds them attached for that time). */
const busy = new Map<string, number>();
let faults: Faults = {};
let exportBytesSinceFault = 0;
const stats = { logins: 0, logouts: 0, exports: 0, imports: 0, calls: {} as Record<string, number> };

const newRef = () => `OpaqueRef:${randomUUID()}`;
/** XenAPI's datetime wire form, e.g. 20240102T03:04:05Z. */
const xenNow = () => new Date().toISOString().replace(/\.\d+Z$/, 'Z').replaceAll('-', '');
const vdiFile = (v: Vdi) => path.join(dir, srs.get(v.SR)!.uuid, `${v.uuid}.raw`);

// ---- object lookup -------------------------------------------------------------------------------------------

function vdiOf(ref: unknown): Vdi {
  const v = typeof ref === 'string' ? vdis.get(ref) : undefined;
  if (!v) throw new Failure('HANDLE_INVALID', ['VDI', String(ref)]);
  return v;
}
function srOf(ref: unknown): Sr {
  const s = typeof ref === 'string' ? srs.get(ref) : undefined;
  if (!s) throw new Failure('HANDLE_INVALID', ['SR', String(ref)]);
  return s;
}
function taskOf(ref: unknown): Task {
  const t = typeof ref === 'string' ? tasks.get(ref) : undefined;
  if (!t) throw new Failure('HANDLE_INVALID', ['task', String(ref)]);
  return t;
}
function byUuid<T extends { uuid: string; ref: string }>(map: Map<string, T>, cls: string, uuid: unknown): string {
  for (const o of map.values()) if (o.uuid === uuid) return o.ref;
  throw new Failure('UUID_INVALID', [cls, String(uuid)]);
}
function assertNotInUse(v: Vdi, op: string): void {
  if ((busy.get(v.ref) ?? 0) > 0 || (faults.attachedVdis ?? []).includes(v.uuid)) throw new Failure('VDI_IN_USE', [v.ref, op]);
}
function toInt(v: unknown, what: string): number {
  const n = typeof v === 'string' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) throw new Failure('FIELD_TYPE_ERROR', [what]);
  return n;
}
async function withBusy<T>(refs: string[], fn: () => Promise<T>): Promise<T> {
  for (const r of refs) busy.set(r, (busy.get(r) ?? 0) + 1);
  try {
    return await fn();
  } finally {
    for (const r of refs) busy.set(r, (busy.get(r) ?? 1) - 1);
  }
}

function vdiRecord(v: Vdi): Record<string, unknown> {
  const { ref: _ref, ...rest } = v;
  return {
    ...rest,
    physical_utilisation: v.virtual_size,
    allowed_operations: ['snapshot', 'copy', 'destroy', 'resize', 'clone'],
    current_operations: {},
    VBDs: [],
    crash_dumps: [],
    managed: true,
    missing: false,
    storage_lock: false,
    location: v.uuid,
    parent: NULL_REF,
  };
}

function newVdi(sr: Sr, fields: Partial<Vdi> & { virtual_size: number }): Vdi {
  const v: Vdi = {
    ref: newRef(),
    uuid: randomUUID(),
    name_label: '',
    name_description: '',
    type: 'user',
    sharable: false,
    read_only: false,
    other_config: {},
    xenstore_data: {},
    sm_config: {},
    tags: [],
    is_a_snapshot: false,
    snapshot_of: NULL_REF,
    snapshots: [],
    snapshot_time: '19700101T00:00:00Z',
    ...fields,
    SR: sr.ref,
  };
  vdis.set(v.ref, v);
  return v;
}

// ---- disk content --------------------------------------------------------------------------------------------

/** Copies `src` into `dst` block by block; with `base`, only blocks where src differs from base (VDI.copy's delta mode). */
async function copyBlocks(src: string, dst: string, size: number, base?: { file: string; size: number }): Promise<void> {
  const BLOCK = 1024 * 1024;
  const [s, d, b] = await Promise.all([open(src, 'r'), open(dst, 'r+'), base ? open(base.file, 'r') : undefined]);
  try {
    const buf = Buffer.alloc(BLOCK);
    const old = Buffer.alloc(BLOCK);
    for (let off = 0; off < size; off += BLOCK) {
      const len = Math.min(BLOCK, size - off);
      const { bytesRead } = await s.read(buf, 0, len, off);
      buf.fill(0, bytesRead, len);
      if (b && base) {
        old.fill(0);
        if (off < base.size) await b.read(old, 0, Math.min(len, base.size - off), off);
        if (buf.subarray(0, len).equals(old.subarray(0, len))) continue;
      }
      await d.write(buf, 0, len, off);
    }
    await d.sync();
  } finally {
    await Promise.all([s.close(), d.close(), b?.close()]);
  }
}

async function vhdVirtualSize(file: string): Promise<number> {
  const { stdout } = await exec('qemu-img', ['info', '-f', 'vpc', '--output=json', file]);
  return (JSON.parse(stdout) as { 'virtual-size': number })['virtual-size'];
}

// ---- XenAPI methods ------------------------------------------------------------------------------------------

type Method = { arity: number; fn: (...a: unknown[]) => unknown | Promise<unknown> };

/** Methods taking a session as first parameter; `arity` counts the parameters after it. */
const methods: Record<string, Method> = {
  'session.logout': { arity: 0, fn: () => '' },
  'session.get_uuid': { arity: 1, fn: (self) => sessionOf(self).uuid },

  'SR.get_by_uuid': { arity: 1, fn: (uuid) => byUuid(srs, 'SR', uuid) },
  'SR.get_record': { arity: 1, fn: (ref) => ({ ...srOf(ref), ref: undefined, VDIs: [...vdis.values()].filter((v) => v.SR === ref).map((v) => v.ref) }) },
  'SR.get_uuid': { arity: 1, fn: (ref) => srOf(ref).uuid },

  'VDI.get_by_uuid': { arity: 1, fn: (uuid) => byUuid(vdis, 'VDI', uuid) },
  'VDI.get_record': { arity: 1, fn: (ref) => vdiRecord(vdiOf(ref)) },
  'VDI.get_uuid': { arity: 1, fn: (ref) => vdiOf(ref).uuid },
  'VDI.get_snapshots': { arity: 1, fn: (ref) => [...vdiOf(ref).snapshots] },
  'VDI.get_virtual_size': { arity: 1, fn: (ref) => vdiOf(ref).virtual_size },
  'VDI.get_all_records_where': { arity: 1, fn: (expr) => allRecordsWhere(expr) },
  'VDI.set_name_label': { arity: 2, fn: (ref, value) => void (vdiOf(ref).name_label = String(value)) },
  'VDI.add_to_other_config': {
    arity: 3,
    fn: (ref, key, value) => {
      const v = vdiOf(ref);
      const k = String(key);
      if (k in v.other_config) throw new Failure('MAP_DUPLICATE_KEY', ['VDI', 'other_config', v.ref, k]);
      v.other_config[k] = String(value);
    },
  },
  'VDI.remove_from_other_config': { arity: 2, fn: (ref, key) => void delete vdiOf(ref).other_config[String(key)] },
  'VDI.create': { arity: 1, fn: (rec) => vdiCreate(rec) },
  'VDI.destroy': { arity: 1, fn: (ref) => vdiDestroy(ref) },
  'VDI.resize': { arity: 2, fn: (ref, size) => vdiResize(ref, size) },
  'VDI.snapshot': { arity: 2, fn: (ref) => vdiSnapshot(ref) },
  'VDI.copy': { arity: 4, fn: (ref, sr, base, into) => vdiCopy(ref, sr, base, into) },
  // Real xapi moves only VDIs attached to a running VM this way; the simulator has no VMs.
  'VDI.pool_migrate': { arity: 3, fn: (ref) => { throw new Failure('VDI_NEEDS_VM_FOR_MIGRATE', [vdiOf(ref).ref]); } },

  'task.create': { arity: 2, fn: (label, desc) => newTask(String(label), String(desc)).ref },
  'task.get_status': { arity: 1, fn: (ref) => taskOf(ref).status },
  'task.get_result': { arity: 1, fn: (ref) => taskOf(ref).result },
  'task.get_error_info': { arity: 1, fn: (ref) => taskOf(ref).error_info },
  'task.get_progress': { arity: 1, fn: (ref) => taskOf(ref).progress },
  'task.get_record': { arity: 1, fn: (ref) => ({ ...taskOf(ref), ref: undefined }) },
  'task.cancel': { arity: 1, fn: (ref) => void (taskOf(ref).status === 'pending' && (taskOf(ref).status = 'cancelling')) },
  'task.destroy': { arity: 1, fn: (ref) => void (taskOf(ref), tasks.delete(String(ref))) },
};

function sessionOf(ref: unknown): Session {
  const s = typeof ref === 'string' ? sessions.get(ref) : undefined;
  if (!s?.valid) throw new Failure('SESSION_INVALID', [String(ref)]);
  return s;
}

function login(user: unknown, pwd: unknown): string {
  if (user !== username || pwd !== password) throw new Failure('SESSION_AUTHENTICATION_FAILED', [String(user), 'Authentication failure']);
  stats.logins++;
  const s: Session = { ref: newRef(), uuid: randomUUID(), valid: true };
  sessions.set(s.ref, s);
  return s.ref;
}

/** Supports the conjunction-of-equalities subset of XenAPI's query language: field "a" = "b" and field "c" = "d". */
function allRecordsWhere(expr: unknown): Record<string, unknown> {
  const clauses = String(expr).split(/\s+and\s+/i).map((c) => /^\s*field\s+"([^"]+)"\s*=\s*"([^"]*)"\s*$/.exec(c));
  if (clauses.some((c) => !c)) throw new Failure('INTERNAL_ERROR', [`simulator supports only field "x" = "y" [and ...], got ${String(expr)}`]);
  const out: Record<string, unknown> = {};
  for (const v of vdis.values()) {
    const rec = vdiRecord(v);
    if (clauses.every((c) => String(rec[c![1]!]) === c![2])) out[v.ref] = rec;
  }
  return out;
}

async function vdiCreate(rec: unknown): Promise<string> {
  if (!rec || typeof rec !== 'object') throw new Failure('FIELD_TYPE_ERROR', ['VDI record']);
  const r = rec as Record<string, unknown>;
  const sr = srOf(r.SR);
  const size = toInt(r.virtual_size, 'virtual_size');
  const v = newVdi(sr, {
    virtual_size: size,
    name_label: String(r.name_label ?? ''),
    name_description: String(r.name_description ?? ''),
    type: String(r.type ?? 'user'),
    sharable: Boolean(r.sharable),
    read_only: Boolean(r.read_only),
    other_config: { ...((r.other_config as Record<string, string>) ?? {}) },
    sm_config: { ...((r.sm_config as Record<string, string>) ?? {}) },
    xenstore_data: { ...((r.xenstore_data as Record<string, string>) ?? {}) },
    tags: [...((r.tags as string[]) ?? [])],
  });
  const fh = await open(vdiFile(v), 'wx');
  await fh.truncate(size);
  await fh.close();
  return v.ref;
}

async function vdiDestroy(ref: unknown): Promise<string> {
  const v = vdiOf(ref);
  assertNotInUse(v, 'destroy');
  vdis.delete(v.ref);
  const parent = vdis.get(v.snapshot_of);
  if (parent) parent.snapshots = parent.snapshots.filter((s) => s !== v.ref);
  // Snapshots outlive their VDI in XenServer; they just lose the link.
  for (const s of v.snapshots) {
    const snap = vdis.get(s);
    if (snap) snap.snapshot_of = NULL_REF;
  }
  await rm(vdiFile(v), { force: true });
  return '';
}

async function vdiResize(ref: unknown, size: unknown): Promise<string> {
  const v = vdiOf(ref);
  const n = toInt(size, 'size');
  assertNotInUse(v, 'resize');
  // XenServer's SM backends refuse to shrink; this is the error the ext/LVM SRs answer.
  if (n < v.virtual_size) throw new Failure('SR_BACKEND_FAILURE_79', ['', 'VDI Invalid size [opterr=shrinking not allowed]', '']);
  await truncate(vdiFile(v), n);
  v.virtual_size = n;
  return '';
}

async function vdiSnapshot(ref: unknown): Promise<string> {
  const v = vdiOf(ref);
  if (v.is_a_snapshot) throw new Failure('OPERATION_NOT_ALLOWED', ['cannot snapshot a snapshot in the simulator']);
  const snap = newVdi(srs.get(v.SR)!, {
    virtual_size: v.virtual_size,
    name_label: v.name_label,
    name_description: v.name_description,
    other_config: { ...v.other_config },
    is_a_snapshot: true,
    snapshot_of: v.ref,
    snapshot_time: xenNow(),
    read_only: true,
  });
  // A reflink where the filesystem has them, else a full copy: either way the bytes are frozen at this instant.
  await copyFile(vdiFile(v), vdiFile(snap), fsc.COPYFILE_FICLONE);
  v.snapshots.push(snap.ref);
  return snap.ref;
}

async function vdiCopy(ref: unknown, srRef: unknown, baseRef: unknown, intoRef: unknown): Promise<string> {
  const v = vdiOf(ref);
  const base = baseRef === NULL_REF ? undefined : vdiOf(baseRef);
  if (intoRef !== NULL_REF) {
    const into = vdiOf(intoRef);
    if (into.read_only) throw new Failure('VDI_READONLY', [into.ref]);
    if (into.virtual_size < v.virtual_size) throw new Failure('VDI_TOO_SMALL', [into.ref, String(v.virtual_size)]);
    await withBusy([v.ref, into.ref], () =>
      copyBlocks(vdiFile(v), vdiFile(into), v.virtual_size, base && { file: vdiFile(base), size: base.virtual_size }),
    );
    return into.ref;
  }
  const sr = srOf(srRef);
  const copy = newVdi(sr, { virtual_size: v.virtual_size, name_label: v.name_label, name_description: v.name_description });
  await withBusy([v.ref], () => copyFile(vdiFile(v), vdiFile(copy)));
  return copy.ref;
}

function newTask(label: string, description: string): Task {
  const t: Task = {
    ref: newRef(),
    uuid: randomUUID(),
    name_label: label,
    name_description: description,
    status: 'pending',
    progress: 0,
    result: '',
    error_info: [],
    created: xenNow(),
    finished: '19700101T00:00:00Z',
  };
  tasks.set(t.ref, t);
  return t;
}

function finishTask(ref: string | undefined, outcome: { result?: unknown; error?: Failure }): void {
  const t = ref ? tasks.get(ref) : undefined;
  if (!t || t.status !== 'pending') return;
  t.finished = xenNow();
  t.progress = 1;
  if (outcome.error) {
    t.status = 'failure';
    t.error_info = [outcome.error.code, ...outcome.error.params];
  } else {
    t.status = 'success';
    // Task results are XML-RPC-encoded values, also over JSON-RPC.
    t.result = typeof outcome.result === 'string' && outcome.result !== '' ? `<value>${outcome.result}</value>` : '';
  }
}

function asFailure(err: unknown): Failure {
  if (err instanceof Failure) return err;
  return new Failure('INTERNAL_ERROR', [err instanceof Error ? err.message : String(err)]);
}

async function dispatch(method: unknown, params: unknown): Promise<unknown> {
  if (typeof method !== 'string' || !Array.isArray(params)) throw new Failure('INTERNAL_ERROR', ['malformed request']);
  stats.calls[method] = (stats.calls[method] ?? 0) + 1;
  if (method === 'session.login_with_password') {
    if (params.length < 2 || params.length > 4) throw new Failure('MESSAGE_PARAMETER_COUNT_MISMATCH', [method, '4', String(params.length)]);
    return login(params[0], params[1]);
  }
  const isAsync = method.startsWith('Async.');
  const name = isAsync ? method.slice('Async.'.length) : method;
  const m = methods[name];
  if (!m) throw new Failure('MESSAGE_METHOD_UNKNOWN', [method]);
  if (params.length !== m.arity + 1) throw new Failure('MESSAGE_PARAMETER_COUNT_MISMATCH', [method, String(m.arity + 1), String(params.length)]);
  const session = sessionOf(params[0]);
  const args = params.slice(1);
  if (name === 'session.logout') {
    session.valid = false;
    stats.logouts++;
    return '';
  }
  if (!isAsync) return m.fn(...args);
  const task = newTask(`Async.${name}`, '');
  setImmediate(() => {
    Promise.resolve()
      .then(() => m.fn(...args))
      .then((result) => finishTask(task.ref, { result }), (err: unknown) => finishTask(task.ref, { error: asFailure(err) }));
  });
  return task.ref;
}

// ---- HTTP ----------------------------------------------------------------------------------------------------

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

async function handleJsonRpc(req: IncomingMessage, res: ServerResponse): Promise<void> {
  let body: { jsonrpc?: string; method?: unknown; params?: unknown; id?: unknown };
  try {
    body = JSON.parse(await readBody(req)) as typeof body;
  } catch {
    res.writeHead(500, { 'content-type': 'text/html', connection: 'close' });
    res.end('<html><body><h1>HTTP 500 internal server error</h1>Jsonrpc.Malformed_method_request</body></html>');
    return;
  }
  const id = body.id ?? null;
  try {
    const result = await dispatch(body.method, body.params ?? []);
    json(res, 200, { jsonrpc: '2.0', result, id });
  } catch (err) {
    const f = asFailure(err);
    json(res, 200, { jsonrpc: '2.0', error: { code: 1, message: f.code, data: f.params }, id });
  }
}

/** Checks the HTTP handler's session; xapi answers 401 for a missing or stale one. */
function httpSessionOk(q: URLSearchParams, res: ServerResponse): boolean {
  const s = sessions.get(q.get('session_id') ?? '');
  if (s?.valid) return true;
  res.writeHead(401, { 'content-type': 'text/html', connection: 'close' });
  res.end('<html><body><h1>HTTP 401 unauthorised</h1></body></html>');
  return false;
}

function vdiFromQuery(q: URLSearchParams): Vdi {
  const key = q.get('vdi') ?? '';
  const v = vdis.get(key) ?? [...vdis.values()].find((x) => x.uuid === key);
  if (!v) throw new Failure('HANDLE_INVALID', ['VDI', key]);
  return v;
}

function expireAllSessions(): void {
  for (const s of sessions.values()) s.valid = false;
  faults.expireSessionsAfterBytes = null;
}

async function handleExport(req: IncomingMessage, res: ServerResponse, q: URLSearchParams): Promise<void> {
  stats.exports++;
  if (faults.expireSessionsAfterBytes === 0) expireAllSessions();
  if (!httpSessionOk(q, res)) return;
  const taskRef = q.get('task_id') ?? undefined;
  const format = q.get('format') ?? 'raw';
  if (format !== 'raw' && format !== 'vhd') {
    finishTask(taskRef, { error: new Failure('INTERNAL_ERROR', [`Unknown format ${format}`]) });
    res.writeHead(404, { connection: 'close' }).end();
    return;
  }
  let v: Vdi;
  try {
    v = vdiFromQuery(q);
  } catch (err) {
    finishTask(taskRef, { error: asFailure(err) });
    res.writeHead(500, { connection: 'close' }).end();
    return;
  }
  await withBusy([v.ref], async () => {
    const tmpDir = path.join(dir, '.tmp');
    const tmp = path.join(tmpDir, `${randomUUID()}.vhd`);
    try {
      let file = vdiFile(v);
      if (format === 'vhd') {
        await mkdir(tmpDir, { recursive: true });
        // force_size keeps the exact virtual size (creator 'qem2'), as XenServer's own VHDs do.
        await exec('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vpc', '-o', 'subformat=dynamic,force_size=on', file, tmp]);
        file = tmp;
      }
      await streamExport(res.socket!, file, v, taskRef, format);
    } catch (err) {
      finishTask(taskRef, { error: asFailure(err) });
      res.socket?.destroy();
    } finally {
      await rm(tmp, { force: true });
    }
  });
}

/** Writes the response by hand, as xapi does: no Content-Length (unless asked), the body ends when the connection does. */
async function streamExport(sock: Socket, file: string, v: Vdi, taskRef: string | undefined, format: string): Promise<void> {
  const fh = await open(file, 'r');
  try {
    const { size } = await fh.stat();
    const head = [
      'HTTP/1.1 200 OK',
      'connection: close',
      'cache-control: no-cache, no-store',
      ...(taskRef ? [`task-id: ${taskRef}`] : []),
      'content-type: application/octet-stream',
      `content-disposition: attachment; filename="${v.uuid}.${format}"`,
      ...(faults.exportContentLength ? [`content-length: ${size}`] : []),
    ];
    sock.write(`${head.join('\r\n')}\r\n\r\n`);
    const failing = (faults.failNextExports ?? 0) > 0;
    if (failing) faults.failNextExports! -= 1;
    const failAt = failing ? (faults.failExportAfterBytes ?? 0) : Infinity;
    const buf = Buffer.alloc(256 * 1024);
    let sent = 0;
    while (sent < size) {
      if (sock.destroyed) throw new Failure('INTERNAL_ERROR', ['client went away']);
      if (sent >= failAt) {
        finishTask(taskRef, { error: new Failure('VDI_IO_ERROR', ['Device I/O errors']) });
        sock.destroy();
        return;
      }
      const want = Math.min(buf.length, size - sent, failAt - sent);
      const { bytesRead } = await fh.read(buf, 0, want, sent);
      const chunk = Buffer.from(buf.subarray(0, bytesRead));
      if (!sock.write(chunk)) await new Promise<void>((r) => sock.once('drain', r).once('close', r));
      sent += bytesRead;
      exportBytesSinceFault += bytesRead;
      const expireAt = faults.expireSessionsAfterBytes;
      if (expireAt != null && exportBytesSinceFault >= expireAt) {
        expireAllSessions();
        if (faults.dropConnectionOnExpiry) {
          sock.destroy();
          finishTask(taskRef, { error: new Failure('INTERNAL_ERROR', ['connection lost']) });
          return;
        }
      }
      if (faults.exportBytesPerSec) await new Promise((r) => setTimeout(r, (bytesRead / faults.exportBytesPerSec!) * 1000));
    }
    finishTask(taskRef, { result: '' });
    await new Promise<void>((r) => sock.end(r));
  } finally {
    await fh.close();
  }
}

async function handleImport(req: IncomingMessage, res: ServerResponse, q: URLSearchParams): Promise<void> {
  stats.imports++;
  if (!httpSessionOk(q, res)) return;
  const taskRef = q.get('task_id') ?? undefined;
  const format = q.get('format') ?? 'raw';
  // xapi cannot import a VHD sent with chunked encoding: it needs the length up front.
  if (req.headers['transfer-encoding'] || req.headers['content-length'] === undefined || (format !== 'raw' && format !== 'vhd')) {
    finishTask(taskRef, { error: new Failure('INTERNAL_ERROR', ['import needs a Content-Length and format raw or vhd']) });
    res.writeHead(403, { connection: 'close' }).end();
    return;
  }
  let v: Vdi;
  try {
    v = vdiFromQuery(q);
  } catch (err) {
    finishTask(taskRef, { error: asFailure(err) });
    res.writeHead(500, { connection: 'close' }).end();
    return;
  }
  // xapi answers 200 before reading the body; the outcome is reported through the task.
  res.writeHead(200, { connection: 'close', ...(taskRef ? { 'task-id': taskRef } : {}) });
  res.flushHeaders();
  const tmpDir = path.join(dir, '.tmp');
  const tmp = path.join(tmpDir, `${randomUUID()}.${format}`);
  await withBusy([v.ref], async () => {
    try {
      await mkdir(tmpDir, { recursive: true });
      await pipeline(req, createWriteStream(tmp));
      if (Number(req.headers['content-length']) !== (await fileSize(tmp))) throw new Failure('INTERNAL_ERROR', ['short import body']);
      if ((faults.failNextImports ?? 0) > 0) {
        faults.failNextImports! -= 1;
        throw new Failure('VDI_IO_ERROR', ['Device I/O errors']);
      }
      const size = format === 'vhd' ? await vhdVirtualSize(tmp) : await fileSize(tmp);
      if (size > v.virtual_size) throw new Failure('VDI_TOO_SMALL', [v.ref, String(size)]);
      if (format === 'vhd') await exec('qemu-img', ['convert', '-q', '-n', '-f', 'vpc', '-O', 'raw', tmp, vdiFile(v)]);
      else await pipeline(createReadStream(tmp), createWriteStream(vdiFile(v), { flags: 'r+' }));
      finishTask(taskRef, { result: '' });
    } catch (err) {
      finishTask(taskRef, { error: asFailure(err) });
    } finally {
      await rm(tmp, { force: true });
      res.end();
    }
  });
}

async function fileSize(file: string): Promise<number> {
  const fh = await open(file, 'r');
  try {
    return (await fh.stat()).size;
  } finally {
    await fh.close();
  }
}

/** Simulator-only admin API: fault injection and counters for tests. No real XenServer has it. */
async function handleAdmin(req: IncomingMessage, res: ServerResponse, pathname: string): Promise<void> {
  if (req.method === 'POST' && pathname === '/_sim/faults') {
    const patch = JSON.parse((await readBody(req)) || '{}') as Faults;
    faults = { ...faults, ...patch };
    if ('expireSessionsAfterBytes' in patch) exportBytesSinceFault = 0;
    return json(res, 200, faults);
  }
  if (req.method === 'POST' && pathname === '/_sim/sessions/expire') {
    expireAllSessions();
    return json(res, 200, {});
  }
  if (req.method === 'GET' && pathname === '/_sim/stats') {
    const active = [...sessions.values()].filter((s) => s.valid).length;
    return json(res, 200, { ...stats, activeSessions: active, pendingTasks: [...tasks.values()].filter((t) => t.status === 'pending').length, tasks: tasks.size });
  }
  if (req.method === 'GET' && pathname === '/_sim/sessions') return json(res, 200, { refs: [...sessions.keys()] });
  if (req.method === 'GET' && pathname === '/_sim/vdis') return json(res, 200, [...vdis.values()].map((v) => ({ ...vdiRecord(v), ref: v.ref, file: vdiFile(v) })));
  json(res, 404, { error: 'unknown simulator admin endpoint' });
}

const server = createServer((req, res) => {
  const url = new URL(req.url ?? '/', 'http://sim');
  const route = async () => {
    if (url.pathname.startsWith('/_sim/')) return handleAdmin(req, res, url.pathname);
    if (req.method === 'POST' && url.pathname === '/jsonrpc') return handleJsonRpc(req, res);
    if (req.method === 'GET' && url.pathname === '/export_raw_vdi') return handleExport(req, res, url.searchParams);
    if (req.method === 'PUT' && url.pathname === '/import_raw_vdi') return handleImport(req, res, url.searchParams);
    res.writeHead(404, { connection: 'close' }).end();
  };
  route().catch((err: unknown) => {
    process.stderr.write(`xenapi-simulator: ${err instanceof Error ? err.stack : String(err)}\n`);
    if (!res.headersSent) res.writeHead(500, { connection: 'close' }).end();
    else res.socket?.destroy();
  });
});

async function main(): Promise<void> {
  for (const uuid of args.sr?.length ? args.sr : [randomUUID(), randomUUID()]) {
    const sr: Sr = { ref: newRef(), uuid: uuid.toLowerCase(), name_label: `sim-sr-${uuid.slice(0, 8)}` };
    srs.set(sr.ref, sr);
    await mkdir(path.join(dir, sr.uuid), { recursive: true });
  }
  await new Promise<void>((resolve) => server.listen(Number(args.port), args.host, resolve));
  const { port } = server.address() as { port: number };
  process.stdout.write(`${JSON.stringify({ url: `http://${args.host}:${port}`, srs: [...srs.values()].map((s) => s.uuid), pid: process.pid })}\n`);
}

for (const sig of ['SIGTERM', 'SIGINT'] as const) {
  process.on(sig, () => {
    server.closeAllConnections();
    server.close(() => process.exit(0));
  });
}

main().catch((err: unknown) => {
  process.stderr.write(`xenapi-simulator failed to start: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
