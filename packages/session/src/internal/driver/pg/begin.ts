/**
 * A unit's BEGIN sent in the same write as its first statement. The driver answers BEGIN at once (`deferBegin`)
 * and sends it before the next command: its Parse / Bind / Execute, then the command's own messages and their one
 * Sync. The server runs them in order up to the Sync: BEGIN opens the transaction, the statement runs in it, one
 * ReadyForQuery answers both. If BEGIN fails the server skips the statement (it never runs outside the transaction)
 * and the statement's callback receives BEGIN's error; if the statement fails the transaction is failed (`E`),
 * exactly as when the two were sent one after the other. One round trip and one write fewer per unit.
 *
 * @internal
 */
import * as Pg from "pg"

// node-postgres's protocol connection and query internals are untyped in @types/pg
type Protocol = any

/** BEGIN in any of the forms `Dialect.begin` writes (and only those): what the driver may defer. @internal */
export const isBegin = (sql: string, values: ReadonlyArray<unknown>): boolean =>
  values.length === 0 && (sql === "BEGIN" || sql.startsWith("BEGIN ISOLATION LEVEL ") || sql === "BEGIN READ ONLY")

/** Writes BEGIN's Parse / Bind / Execute (unnamed statement and portal, no Sync: the command that follows sends it). */
const writeBegin = (connection: Protocol, begin: string): void => {
  connection.parse({ text: begin, name: "", types: [] })
  connection.bind({ portal: "", statement: "", values: [] })
  connection.execute({ portal: "", rows: 0 })
}

const QueryBase = Pg.Query as unknown as new (
  config: Pg.QueryConfig,
  values: undefined,
  cb: unknown
) => {
  submit(connection: Protocol): Error | null
  handleCommandComplete(msg: unknown, connection: Protocol): void
}

/**
 * A node-postgres query preceded by `begin` in the same write: BEGIN's CommandComplete, the first the server sends,
 * is not the statement's and is passed over. Errors (BEGIN's or the statement's) reach the callback as usual.
 *
 * @internal
 */
export class AfterBegin extends QueryBase {
  private beginDone = false
  constructor(
    private readonly begin: string,
    config: Pg.QueryConfig,
    callback: (err: unknown, result: any) => void
  ) {
    super(config, undefined, callback)
  }

  override submit(connection: Protocol): Error | null {
    const stream = connection.stream as { cork?: () => void; uncork?: () => void }
    stream.cork?.()
    try {
      writeBegin(connection, this.begin)
      return super.submit(connection)
    } finally {
      stream.uncork?.()
    }
  }

  override handleCommandComplete(msg: unknown, connection: Protocol): void {
    if (!this.beginDone) {
      this.beginDone = true
      return
    }
    super.handleCommandComplete(msg, connection)
  }
}
