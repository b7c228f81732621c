import * as Data from "effect/Data"
import { startFailureMessage } from "./startFailure.js"

const installHint = (isRoot: boolean): string =>
  [
    `Install PostgreSQL: ${isRoot ? "" : "sudo "}apt-get install -y postgresql (Debian/Ubuntu; the system service is not needed),`,
    "or set PG_URL=postgres://user:pass@host:port/db to use an existing PostgreSQL server."
  ].join(" ")

/**
 * No `postgres` / `initdb` binary was found.
 *
 * @since 0.2.0
 * @category errors
 */
export class PgServerNotInstalled extends Data.TaggedError("PgServerNotInstalled")<{
  readonly missing: string
  readonly searched: ReadonlyArray<string>
  readonly isRoot: boolean
}> {
  override get message(): string {
    return `${this.missing} not found (searched ${this.searched.length === 0 ? "nothing" : this.searched.join(", ")}). ${installHint(this.isRoot)}`
  }
}

/**
 * The embedded server could not be prepared, initialised (initdb), started or bootstrapped. Carries the tail of the
 * server's log.
 *
 * @since 0.2.0
 * @category errors
 */
export class PgServerStartFailed extends Data.TaggedError("PgServerStartFailed")<{
  readonly phase: "prepare" | "initialize" | "start" | "bootstrap"
  readonly reason: string
  readonly exitCode: number | null
  readonly signal: string | null
  readonly dataDir: string | undefined
  readonly logFile: string | undefined
  readonly logTail: ReadonlyArray<string>
  readonly cause?: unknown
}> {
  override get message(): string {
    return startFailureMessage("PostgreSQL", this)
  }
}

/**
 * `PG_URL` (or another server url) is not a usable `postgres://user:pass@host:port/db` url. The password is never
 * part of the message.
 *
 * @since 0.2.0
 * @category errors
 */
export class PgServerInvalidUrl extends Data.TaggedError("PgServerInvalidUrl")<{
  readonly source: string
  readonly reason: string
}> {
  override get message(): string {
    return `${this.source} is invalid: ${this.reason}. Expected postgres://user:pass@host:port/db`
  }
}

/**
 * An external server (from `PG_URL`) did not answer.
 *
 * @since 0.2.0
 * @category errors
 */
export class PgServerUnavailable extends Data.TaggedError("PgServerUnavailable")<{
  readonly target: string
  readonly code: string | undefined
  readonly reason: string
}> {
  override get message(): string {
    return `cannot connect to PostgreSQL server ${this.target}${this.code ? ` (${this.code})` : ""}: ${this.reason}`
  }
}

/**
 * The operation needs an embedded server (for example `restart` on a server given by `PG_URL`).
 *
 * @since 0.2.0
 * @category errors
 */
export class PgServerUnsupported extends Data.TaggedError("PgServerUnsupported")<{
  readonly operation: string
  readonly reason: string
}> {
  override get message(): string {
    return `PgServer.${this.operation} is not supported: ${this.reason}`
  }
}

/**
 * @since 0.2.0
 * @category errors
 */
export type PgServerError =
  PgServerNotInstalled | PgServerStartFailed | PgServerInvalidUrl | PgServerUnavailable | PgServerUnsupported
