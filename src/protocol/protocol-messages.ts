/**
 * The messages of `vm-pool protocol` (docs/protocol.md): one JSON object per line in each direction.
 * Requests are validated here, at the edge, with zod; everything below sees parsed data.
 *
 *   → { "id": 1, "op": "exec", "vm": "pytest-worker-4242-1760000000", "command": "uname -a" }
 *   ← { "id": 1, "event": "stdout", "data": "Linux ...\n" }          (only with "stream": true)
 *   ← { "id": 1, "ok": true, "result": { "exitCode": 0, ... } }
 *   ← { "id": 1, "ok": false, "error": { "code": "VMPOOL_...", "message": "...", "hint": "..." } }
 */
import { z } from 'zod'
import { formatZodError } from '../config/zod-error.js'
import { vmSpecSchema } from '../config/vm-spec-schema.js'
import { invalidOptions, type SerializedVmPoolError, type VmPoolError } from '../errors.js'

/** The protocol version this helper speaks; a client sends it in `hello` and gets an error for any other. */
export const PROTOCOL_VERSION = 1

const id = z.union([z.number().int(), z.string().min(1).max(64)])
/** A VM as the client knows it: the name `acquire` or `fresh` answered. */
const vm = z.string().min(1)
const base64 = z.base64({ error: 'expected base64 data' })
const port = z.number().int().min(1).max(65_535)

const keepWarm = z.union([
  z.boolean(),
  z
    .object({
      ttlMs: z.number().int().positive().optional(),
      max: z.number().int().min(0).optional(),
      /** A shell line run before a VM goes idle, or `'snapshot'`. */
      reset: z.string().min(1).optional(),
    })
    .strict(),
])

/** What the helper's one pool looks like; every field has a default (docs/protocol.md, "hello"). */
export const helloPoolSchema = z
  .object({
    provider: z.string().min(1).optional(),
    providerOptions: z.record(z.string(), z.json()).optional(),
    stateDir: z.string().min(1).optional(),
    spec: vmSpecSchema.optional(),
    keepWarm: keepWarm.optional(),
    prefix: z.string().optional(),
    freshPrefix: z.string().optional(),
  })
  .strict()

export type HelloPool = z.infer<typeof helloPoolSchema>

const requestSchemas = {
  hello: z
    .object({
      protocol: z.number().int().positive(),
      /** Who is asking, for logs: e.g. `pytest-vm-pool 0.1.0`. */
      client: z.string().max(200).optional(),
      /** The runner process: the helper exits when it is gone. @default the helper's parent (or --parent-pid) */
      pid: z.number().int().positive().optional(),
      pool: helloPoolSchema.default({}),
      /** Probe the provider (and the spec's image) now, so a bad setup fails here, before any test. */
      check: z.boolean().default(false),
    })
    .strict(),
  acquire: z.object({ key: z.string().min(1).default('worker'), name: z.string().min(1).optional() }).strict(),
  fresh: z.object({ spec: vmSpecSchema.default({}), name: z.string().min(1).optional() }).strict(),
  exec: z
    .object({
      vm,
      /** A string is a shell line; an array is argv, quoted safely. */
      command: z.union([z.string().min(1), z.array(z.string()).min(1)]),
      cwd: z.string().min(1).optional(),
      env: z.record(z.string(), z.string()).optional(),
      input: z.string().optional(),
      inputBase64: base64.optional(),
      timeoutMs: z.number().int().positive().optional(),
      /** Send `stdout` / `stderr` events while the command runs. */
      stream: z.boolean().default(false),
      /**
       * `cancel` (and a drain) kill the command. Costs a small preamble per exec in the guest (two process
       * starts, ~50 ms on an emulated QEMU guest), so it is opt-in; `timeoutMs` implies it.
       */
      cancellable: z.boolean().default(false),
    })
    .strict()
    .refine((value) => value.input === undefined || value.inputBase64 === undefined, { error: 'give input or inputBase64, not both' }),
  putFile: z
    .object({ vm, path: z.string().min(1), data: base64.optional(), localPath: z.string().min(1).optional() })
    .strict()
    .refine((value) => (value.data === undefined) !== (value.localPath === undefined), { error: 'give exactly one of data (base64) or localPath' }),
  getFile: z.object({ vm, path: z.string().min(1), localPath: z.string().min(1).optional() }).strict(),
  forwardPort: z.object({ vm, guestPort: port, hostPort: port.optional() }).strict(),
  closePort: z.object({ forward: z.string().min(1) }).strict(),
  reset: z.object({ vm }).strict(),
  release: z.object({ vm, discard: z.boolean().default(false), keep: z.boolean().default(false) }).strict(),
  cancel: z.object({ target: id }).strict(),
  drain: z.object({ discard: z.boolean().default(false) }).strict(),
} as const

export type Operation = keyof typeof requestSchemas
export type RequestOf<Op extends Operation> = z.output<(typeof requestSchemas)[Op]>
export const OPERATIONS = Object.keys(requestSchemas) as Operation[]

export type RequestId = z.infer<typeof id>

export type ParsedRequest = { [Op in Operation]: { id: RequestId; op: Op; params: RequestOf<Op> } }[Operation]

/** A line the helper could not take as a request; `id` is set when the line had a usable one. */
export class BadRequest extends Error {
  readonly id: RequestId | null
  readonly error: VmPoolError
  constructor(requestId: RequestId | null, error: VmPoolError) {
    super(error.message)
    this.id = requestId
    this.error = error
  }
}

const envelope = z.object({ id, op: z.string().min(1) }).loose()

/** One line → a validated request, or a `BadRequest` saying what is wrong (never the line's data: it may hold a file). */
export function parseRequest(line: string): ParsedRequest {
  let json: unknown
  try {
    json = JSON.parse(line)
  } catch {
    throw new BadRequest(null, invalidOptions('a request line is not JSON', { operation: 'protocol', hint: 'send one JSON object per line, see docs/protocol.md' }))
  }
  const head = envelope.safeParse(json)
  if (!head.success) {
    const maybeId = id.safeParse((json as { id?: unknown } | null)?.id)
    throw new BadRequest(maybeId.success ? maybeId.data : null, invalidOptions(`invalid request: ${formatZodError(head.error)}`, { operation: 'protocol', hint: 'every request has an "id" (number or string) and an "op"' }))
  }
  const { id: requestId, op, ...rest } = head.data
  if (!Object.hasOwn(requestSchemas, op)) {
    throw new BadRequest(requestId, invalidOptions(`unknown op ${JSON.stringify(op)}`, { operation: 'protocol', hint: `ops: ${OPERATIONS.join(', ')}` }))
  }
  const schema = requestSchemas[op as Operation]
  const parsed = schema.safeParse(rest)
  if (!parsed.success) {
    // Quote bad values only for small requests: a putFile's data is never echoed.
    const quotable = line.length <= 2_000 ? rest : undefined
    throw new BadRequest(requestId, invalidOptions(`invalid ${op} request: ${formatZodError(parsed.error, quotable)}`, { operation: op }))
  }
  return { id: requestId, op, params: parsed.data } as ParsedRequest
}

export type ResponseMessage = { id: RequestId | null; ok: true; result: unknown } | { id: RequestId | null; ok: false; error: SerializedVmPoolError }

export interface EventMessage {
  id: RequestId
  event: 'stdout' | 'stderr'
  data: string
}
