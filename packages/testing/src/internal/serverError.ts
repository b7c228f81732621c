import * as Data from "effect/Data"
import { startFailureMessage } from "./startFailure.js"

const installHint = (isRoot: boolean): string =>
  [
    `Install MariaDB: ${isRoot ? "" : "sudo "}apt-get install -y mariadb-server (Debian/Ubuntu),`,
    "or set MYSQL_URL=mysql://user:pass@host:port/db to use an existing MySQL 8 / MariaDB server."
  ].join(" ")

/**
 * No `mariadbd` / `mysqld` binary (or no tool to initialise a data directory) was found.
 *
 * @since 0.1.0
 * @category errors
 */
export class MysqlServerNotInstalled extends Data.TaggedError("MysqlServerNotInstalled")<{
  readonly missing: string
  readonly searched: ReadonlyArray<string>
  readonly isRoot: boolean
}> {
  override get message(): string {
    return `${this.missing} not found (searched ${this.searched.length === 0 ? "nothing" : this.searched.join(", ")}). ${installHint(this.isRoot)}`
  }
}

/**
 * The embedded server could not be prepared, started or bootstrapped. Carries the tail of the server's error log.
 *
 * @since 0.1.0
 * @category errors
 */
export class MysqlServerStartFailed extends Data.TaggedError("MysqlServerStartFailed")<{
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
    return startFailureMessage("MySQL", this)
  }
}

/**
 * `MYSQL_URL` (or another server url) is not a usable `mysql://user:pass@host:port/db` url. The password is never
 * part of the message.
 *
 * @since 0.1.0
 * @category errors
 */
export class MysqlServerInvalidUrl extends Data.TaggedError("MysqlServerInvalidUrl")<{
  readonly source: string
  readonly reason: string
}> {
  override get message(): string {
    return `${this.source} is invalid: ${this.reason}. Expected mysql://user:pass@host:port/db`
  }
}

/**
 * An external server (from `MYSQL_URL`) did not answer.
 *
 * @since 0.1.0
 * @category errors
 */
export class MysqlServerUnavailable extends Data.TaggedError("MysqlServerUnavailable")<{
  readonly target: string
  readonly code: string | undefined
  readonly reason: string
}> {
  override get message(): string {
    return `cannot connect to MySQL server ${this.target}${this.code ? ` (${this.code})` : ""}: ${this.reason}`
  }
}

/**
 * The operation needs an embedded server (for example `restart` on a server given by `MYSQL_URL`).
 *
 * @since 0.1.0
 * @category errors
 */
export class MysqlServerUnsupported extends Data.TaggedError("MysqlServerUnsupported")<{
  readonly operation: string
  readonly reason: string
}> {
  override get message(): string {
    return `MysqlServer.${this.operation} is not supported: ${this.reason}`
  }
}

/**
 * @since 0.1.0
 * @category errors
 */
export type MysqlServerError =
  | MysqlServerNotInstalled
  | MysqlServerStartFailed
  | MysqlServerInvalidUrl
  | MysqlServerUnavailable
  | MysqlServerUnsupported
