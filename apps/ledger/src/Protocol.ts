/**
 * The operations by name, shared by the TCP line protocol (and `batch`): decode the payload, run the handler,
 * encode the result; errors become `{ code, message, …details }`. Decoders and encoders are built once per
 * operation, and whatever can be answered without the database is answered synchronously (no Effect at all).
 */
import type * as Either from "effect/Either"
import * as Effect from "effect/Effect"
import * as ParseResult from "effect/ParseResult"
import type * as Schema from "effect/Schema"
import { Account, HistoryPage, toWire, Transfer } from "./Domain/Account.js"
import { errorInfo, InternalError, type ProtocolError } from "./Domain/Errors.js"
import type { LedgerError } from "./Domain/Errors.js"
import {
  Batch,
  BatchResult,
  CreateAccount,
  Deposit,
  GetBalance,
  GetHistory,
  TransferRequest,
  Withdraw
} from "./Domain/Requests.js"
import * as Input from "./Input.js"
import type { Ledger } from "./Ledger.js"

interface Operation {
  readonly decode: (u: unknown) => Either.Either<any, ParseResult.ParseIssue>
  readonly encode: (a: any) => Either.Either<unknown, ParseResult.ParseIssue>
  /**
   * The payload of a plain, valid request, decoded by hand; `undefined` when it cannot vouch for the input (then the
   * schema decides, and describes what is wrong). It accepts only what the schema accepts, and yields the same value.
   */
  readonly fastDecode: ((body: Record<string, unknown>) => unknown) | undefined
  /** Likewise for the result: the wire form of a valid result, else `undefined` (the schema encodes it). */
  readonly fastEncode: ((a: any) => unknown) | undefined
  readonly run: (ledger: Ledger, payload: any) => Effect.Effect<unknown, LedgerError>
}

const op = <P, PI, S, SI>(
  payload: Schema.Schema<P, PI>,
  success: Schema.Schema<S, SI>,
  run: (ledger: Ledger, payload: P) => Effect.Effect<S, LedgerError>,
  fastDecode?: (body: Record<string, unknown>) => P | undefined,
  fastEncode?: (a: S) => SI | undefined
): Operation => ({
  decode: ParseResult.decodeUnknownEither(payload, { errors: "all", onExcessProperty: "ignore" }),
  encode: ParseResult.encodeEither(success),
  fastDecode,
  fastEncode,
  run
})

/** An `AccountId` / `TransferId`: a positive safe integer. */
const isId = (u: unknown): u is number => typeof u === "number" && Number.isSafeInteger(u) && u > 0

/** An `Amount` on the wire (a positive safe integer, or 1–30 decimal digits, positive) as a bigint; else undefined. */
const amountOf = (u: unknown): bigint | undefined => {
  if (typeof u === "number") return Number.isSafeInteger(u) && u > 0 ? BigInt(u) : undefined
  if (typeof u === "string" && u.length >= 1 && u.length <= 30 && /^[0-9]+$/.test(u)) {
    const n = BigInt(u)
    return n > 0n ? n : undefined
  }
  return undefined
}

/**
 * `idempotencyKey`: absent (`null` key: no key), a 1–128 character string of well-formed text, or `false` (let the
 * schema say why).
 */
const keyOf = (u: unknown): string | null | false =>
  u === undefined
    ? null
    : typeof u === "string" && u.length >= 1 && u.length <= 128 && Input.isWellFormed(u)
      ? u
      : false

/** A decoded move: the key is present only when given, as the schema's `optional` does. */
const withKey = <A extends object>(a: A, key: string | null): A =>
  key === null ? a : ({ ...a, idempotencyKey: key } as A)

const fastMove = (body: Record<string, unknown>): Deposit | undefined => {
  const amount = amountOf(body.amount)
  const key = keyOf(body.idempotencyKey)
  if (!isId(body.account) || amount === undefined || key === false) return undefined
  return withKey({ account: body.account as Deposit["account"], amount }, key)
}

const fastTransfer = (body: Record<string, unknown>): TransferRequest | undefined => {
  const { from, to } = body
  const amount = amountOf(body.amount)
  const key = keyOf(body.idempotencyKey)
  if (!isId(from) || !isId(to) || from === to || amount === undefined || key === false) return undefined
  return withKey({ from: from as TransferRequest["from"], to: to as TransferRequest["to"], amount }, key)
}

const fastTransferOut = (t: Transfer): typeof Transfer.Encoded | undefined =>
  isId(t.id) &&
  (t.from === null || isId(t.from)) &&
  (t.to === null || isId(t.to)) &&
  t.kind === (t.from === null ? "deposit" : t.to === null ? "withdrawal" : "transfer") &&
  t.amount > 0n &&
  (t.idempotencyKey === null || typeof t.idempotencyKey === "string")
    ? {
        id: t.id,
        kind: t.kind,
        from: t.from,
        to: t.to,
        amount: toWire(t.amount),
        idempotencyKey: t.idempotencyKey
      }
    : undefined

const fastAccountOut = (a: Account): typeof Account.Encoded | undefined =>
  isId(a.id) && typeof a.name === "string" && a.balance >= 0n
    ? { id: a.id, name: a.name, balance: toWire(a.balance) }
    : undefined

export const operations: Record<string, Operation> = {
  create_account: op(CreateAccount, Account, (l, p) => l.createAccount(p), undefined, fastAccountOut),
  deposit: op(Deposit, Transfer, (l, p) => l.deposit(p), fastMove, fastTransferOut),
  withdraw: op(Withdraw, Transfer, (l, p) => l.withdraw(p), fastMove, fastTransferOut),
  transfer: op(TransferRequest, Transfer, (l, p) => l.transfer(p), fastTransfer, fastTransferOut),
  balance: op(
    GetBalance,
    Account,
    (l, p) => l.balance(p),
    (body) => (isId(body.account) ? { account: body.account as GetBalance["account"] } : undefined),
    fastAccountOut
  ),
  history: op(GetHistory, HistoryPage, (l, p) => l.history(p)),
  batch: op(Batch, BatchResult, (l, p) => l.batch(p))
}

const operationNames = Object.keys(operations).join(", ")

/** The operation called `name`, if there is one (own keys only: `__proto__` or `toString` are not operations). */
export const operationOf = (name: unknown): Operation | undefined =>
  typeof name === "string" && Object.hasOwn(operations, name) ? operations[name] : undefined

export type RequestId = string | number | null

export type Response =
  | { readonly id: RequestId; readonly ok: true; readonly result: unknown }
  | { readonly id: RequestId; readonly ok: false; readonly error: ErrorBody }

export interface ErrorBody {
  readonly code: string
  readonly message: string
  readonly [detail: string]: unknown
}

/** `{ code, message, …details }` of a protocol error: its own fields, money as on the wire. */
export const errorBody = (e: ProtocolError): ErrorBody => {
  const body: Record<string, unknown> = { code: errorInfo[e._tag].code, message: e.message }
  for (const key of Object.keys(e)) {
    if (key === "_tag" || key === "message") continue
    const value = (e as unknown as Record<string, unknown>)[key]
    body[key] = typeof value === "bigint" ? toWire(value) : value
  }
  return body as ErrorBody
}

export const codeOf = (e: unknown): string => {
  const tag = (e as { _tag?: string } | null)?._tag
  return tag !== undefined && Object.hasOwn(errorInfo, tag) ? errorInfo[tag as ProtocolError["_tag"]].code : "internal"
}

export const failure = (id: RequestId, e: ProtocolError): Response => ({ id, ok: false, error: errorBody(e) })

/**
 * A refusal about the request itself (malformed, unknown operation, invalid payload), built as the response it is:
 * it never travels through an Effect, so it needs no error object (the same body as `failure` of the error class).
 */
const refusal = (
  id: RequestId,
  tag: ProtocolError["_tag"],
  message: string,
  detail?: Record<string, unknown>
): Response => ({
  id,
  ok: false,
  error: { code: errorInfo[tag].code, message, ...detail }
})

export interface Parsed {
  readonly id: RequestId
  readonly op: unknown
  readonly body: Record<string, unknown>
}

/** Parses one request line; a malformed one yields the error response to send. */
export const parse = (line: string): Parsed | Response => {
  let value: unknown
  try {
    value = JSON.parse(line)
  } catch {
    return refusal(null, "InvalidRequest", "malformed JSON: send one JSON object per line")
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return refusal(null, "InvalidRequest", "a request must be a JSON object with an `op` field")
  }
  const body = value as Record<string, unknown>
  const rawId = body.id
  const id: RequestId = typeof rawId === "string" || typeof rawId === "number" ? rawId : null
  return { id, op: body.op, body }
}

export const isResponse = (u: Parsed | Response): u is Response => "ok" in u

/** An invalid payload: the first few problems and their count (bounded, whatever the input). */
const invalid = (id: RequestId, issue: ParseResult.ParseIssue): Response => {
  const { count, message, problems } = Input.describe(issue)
  return refusal(id, "InvalidRequest", message, { problems, count })
}

const tooDeep = (id: RequestId) =>
  refusal(id, "InvalidRequest", `a request nests at most ${Input.MAX_DEPTH} levels of arrays and objects`)

/**
 * Runs one parsed request (other than `auth`): a response at once when the database is not needed (unknown
 * operation, invalid payload), else the effect that runs it and builds the response.
 */
export const dispatch = (ledger: Ledger, request: Parsed): Response | Effect.Effect<Response> => {
  const operation = operationOf(request.op)
  if (operation === undefined) {
    return refusal(request.id, "UnknownOperation", `unknown operation; expected one of: ${operationNames}`, {
      op: typeof request.op === "string" ? Input.truncate(request.op, 100) : null
    })
  }
  let decoded = operation.fastDecode?.(request.body)
  if (decoded === undefined) {
    // only a plain valid request passes the fast decoder: anything else is measured before a schema walks it
    if (Input.tooDeep(request.body)) return tooDeep(request.id)
    const payload = operation.decode(request.body)
    if (payload._tag === "Left") return invalid(request.id, payload.left)
    decoded = payload.right
  }
  return Effect.matchEffect(operation.run(ledger, decoded), {
    onFailure: (e) => Effect.succeed(failure(request.id, e)),
    onSuccess: (result) => {
      const fast = operation.fastEncode?.(result)
      if (fast !== undefined) return Effect.succeed<Response>({ id: request.id, ok: true, result: fast })
      const encoded = operation.encode(result)
      return encoded._tag === "Right"
        ? Effect.succeed<Response>({ id: request.id, ok: true, result: encoded.right })
        : Effect.as(
            Effect.logError("a result does not match its schema", Input.describe(encoded.left).message),
            failure(request.id, new InternalError({ message: "internal error" }))
          )
    }
  })
}
