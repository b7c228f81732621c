/**
 * The operations by name, shared by the TCP line protocol (and `batch`): decode the payload, run the handler,
 * encode the result; errors become `{ code, message, …details }`.
 */
import * as Effect from "effect/Effect"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import { Account, HistoryPage, Transfer } from "./Domain/Account.js"
import { errorInfo, InternalError, InvalidRequest, ProtocolError, UnknownOperation } from "./Domain/Errors.js"
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
  readonly payload: Schema.Schema<any, any>
  readonly success: Schema.Schema<any, any>
  readonly run: (ledger: Ledger, payload: any) => Effect.Effect<unknown, LedgerError>
}

const op = <P, PI, S, SI>(
  payload: Schema.Schema<P, PI>,
  success: Schema.Schema<S, SI>,
  run: (ledger: Ledger, payload: P) => Effect.Effect<S, LedgerError>
): Operation => ({ payload, success, run })

export const operations: Record<string, Operation> = {
  create_account: op(CreateAccount, Account, (l, p) => l.createAccount(p)),
  deposit: op(Deposit, Transfer, (l, p) => l.deposit(p)),
  withdraw: op(Withdraw, Transfer, (l, p) => l.withdraw(p)),
  transfer: op(TransferRequest, Transfer, (l, p) => l.transfer(p)),
  balance: op(GetBalance, Account, (l, p) => l.balance(p)),
  history: op(GetHistory, HistoryPage, (l, p) => l.history(p)),
  batch: op(Batch, BatchResult, (l, p) => l.batch(p))
}

export type RequestId = string | number | null

export type Response =
  | { readonly id: RequestId; readonly ok: true; readonly result: unknown }
  | { readonly id: RequestId; readonly ok: false; readonly error: ErrorBody }

export interface ErrorBody {
  readonly code: string
  readonly message: string
  readonly [detail: string]: unknown
}

const encodeProtocolError = Schema.encodeSync(ProtocolError)

export const errorBody = (e: ProtocolError): ErrorBody => {
  const { _tag, message, ...details } = encodeProtocolError(e) as { _tag: ProtocolError["_tag"]; message: string }
  return { code: errorInfo[_tag].code, message, ...details }
}

export const codeOf = (e: unknown): string => {
  const tag = (e as { _tag?: string } | null)?._tag
  return tag !== undefined && tag in errorInfo ? errorInfo[tag as ProtocolError["_tag"]].code : "internal"
}

export const failure = (id: RequestId, e: ProtocolError): Response => ({ id, ok: false, error: errorBody(e) })

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
    return failure(null, new InvalidRequest({ message: "malformed JSON: send one JSON object per line" }))
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return failure(null, new InvalidRequest({ message: "a request must be a JSON object with an `op` field" }))
  }
  const { id: rawId, op, ...body } = value as Record<string, unknown>
  const id: RequestId = typeof rawId === "string" || typeof rawId === "number" ? rawId : null
  return { id, op, body }
}

export const isResponse = (u: Parsed | Response): u is Response => "ok" in u

const describe = (e: ParseResult.ParseError) => ParseResult.TreeFormatter.formatErrorSync(e)

/** Runs one parsed request (other than `auth`) and builds its response. */
export const dispatch = (ledger: Ledger, request: Parsed): Effect.Effect<Response> => {
  const operation = typeof request.op === "string" ? operations[request.op] : undefined
  if (operation === undefined || !Object.hasOwn(operations, request.op as string)) {
    return Effect.succeed(
      failure(
        request.id,
        new UnknownOperation({
          op: typeof request.op === "string" ? request.op : null,
          message: `unknown operation; expected one of: ${Object.keys(operations).join(", ")}`
        })
      )
    )
  }
  return Schema.decodeUnknown(operation.payload, { errors: "all", onExcessProperty: "ignore" })(request.body).pipe(
    Effect.mapError((e) => new InvalidRequest({ message: describe(e) })),
    Effect.flatMap((payload) => operation.run(ledger, payload)),
    Effect.flatMap((result) => Schema.encode(operation.success)(result)),
    Effect.map((result): Response => ({ id: request.id, ok: true, result })),
    Effect.catchAll((e) =>
      Effect.succeed(
        failure(request.id, e instanceof ParseResult.ParseError ? new InternalError({ message: "internal error" }) : e)
      )
    )
  )
}
