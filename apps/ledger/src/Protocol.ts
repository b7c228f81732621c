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
import type { Ledger } from "./Ledger.js"

interface Operation {
  readonly decode: (u: unknown) => Either.Either<any, ParseResult.ParseIssue>
  readonly encode: (a: any) => Either.Either<unknown, ParseResult.ParseIssue>
  readonly run: (ledger: Ledger, payload: any) => Effect.Effect<unknown, LedgerError>
}

const op = <P, PI, S, SI>(
  payload: Schema.Schema<P, PI>,
  success: Schema.Schema<S, SI>,
  run: (ledger: Ledger, payload: P) => Effect.Effect<S, LedgerError>
): Operation => ({
  decode: ParseResult.decodeUnknownEither(payload, { errors: "all", onExcessProperty: "ignore" }),
  encode: ParseResult.encodeEither(success),
  run
})

export const operations: Record<string, Operation> = {
  create_account: op(CreateAccount, Account, (l, p) => l.createAccount(p)),
  deposit: op(Deposit, Transfer, (l, p) => l.deposit(p)),
  withdraw: op(Withdraw, Transfer, (l, p) => l.withdraw(p)),
  transfer: op(TransferRequest, Transfer, (l, p) => l.transfer(p)),
  balance: op(GetBalance, Account, (l, p) => l.balance(p)),
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

const describe = (issue: ParseResult.ParseIssue) => ParseResult.TreeFormatter.formatIssueSync(issue)

/**
 * Runs one parsed request (other than `auth`): a response at once when the database is not needed (unknown
 * operation, invalid payload), else the effect that runs it and builds the response.
 */
export const dispatch = (ledger: Ledger, request: Parsed): Response | Effect.Effect<Response> => {
  const operation = operationOf(request.op)
  if (operation === undefined) {
    return refusal(request.id, "UnknownOperation", `unknown operation; expected one of: ${operationNames}`, {
      op: typeof request.op === "string" ? request.op : null
    })
  }
  const payload = operation.decode(request.body)
  if (payload._tag === "Left") return refusal(request.id, "InvalidRequest", describe(payload.left))
  return Effect.matchEffect(operation.run(ledger, payload.right), {
    onFailure: (e) => Effect.succeed(failure(request.id, e)),
    onSuccess: (result) => {
      const encoded = operation.encode(result)
      return encoded._tag === "Right"
        ? Effect.succeed<Response>({ id: request.id, ok: true, result: encoded.right })
        : Effect.as(
            Effect.logError("a result does not match its schema", describe(encoded.left)),
            failure(request.id, new InternalError({ message: "internal error" }))
          )
    }
  })
}
