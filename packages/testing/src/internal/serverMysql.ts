import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Mysql from "mysql2"

/**
 * A mysql2 failure reduced to what is safe to show: mysql2 errors carry the statement text (`sql`), which may contain
 * a password, so they are never kept.
 *
 * @internal
 */
export interface SqlFailure {
  readonly code: string | undefined
  readonly errno: number | undefined
  readonly message: string
}

/** @internal */
export const sanitize = (error: unknown, secrets: ReadonlyArray<string> = []): SqlFailure => {
  const e = (error ?? {}) as { code?: unknown; errno?: unknown; sqlMessage?: unknown; message?: unknown }
  let message = typeof e.sqlMessage === "string" ? e.sqlMessage : typeof e.message === "string" ? e.message : "error"
  for (const secret of secrets) {
    if (secret !== "") {
      message = message.split(secret).join("***")
    }
  }
  return {
    code: typeof e.code === "string" ? e.code : undefined,
    errno: typeof e.errno === "number" ? e.errno : undefined,
    message
  }
}

/** @internal */
export const connect = (options: Mysql.ConnectionOptions): Effect.Effect<Mysql.Connection, SqlFailure> =>
  Effect.async<Mysql.Connection, SqlFailure>((resume) => {
    const conn = Mysql.createConnection({ connectTimeout: 2_000, ...options })
    // a fatal error with no command pending is emitted as an event; never let it become an uncaught exception
    conn.on("error", () => {})
    conn.connect((error) => {
      if (error) {
        conn.destroy()
        resume(Effect.fail(sanitize(error, options.password ? [options.password] : [])))
      } else {
        resume(Effect.succeed(conn))
      }
    })
    return Effect.sync(() => conn.destroy())
  })

/** @internal */
export const query = <A = Record<string, unknown>>(
  conn: Mysql.Connection,
  sql: string,
  values: ReadonlyArray<unknown> = [],
  secrets: ReadonlyArray<string> = []
): Effect.Effect<ReadonlyArray<A>, SqlFailure> =>
  Effect.async<ReadonlyArray<A>, SqlFailure>((resume) => {
    conn.query(sql, [...values] as Array<{} | null>, (error, rows) => {
      if (error) {
        resume(Effect.fail(sanitize(error, secrets)))
      } else {
        resume(Effect.succeed((Array.isArray(rows) ? rows : []) as unknown as ReadonlyArray<A>))
      }
    })
    return Effect.sync(() => conn.destroy())
  })

/** Closes politely (COM_QUIT), and drops the socket if that does not finish quickly. */
export const close = (conn: Mysql.Connection): Effect.Effect<void> =>
  Effect.interruptible(
    Effect.async<void>((resume) => {
      conn.end(() => resume(Effect.void))
    })
  ).pipe(
    Effect.timeoutTo({ duration: Duration.seconds(1), onTimeout: () => undefined, onSuccess: () => undefined }),
    Effect.ensuring(Effect.sync(() => conn.destroy()))
  )

/** @internal */
export const flavorOf = (version: string): "mariadb" | "mysql" => (/mariadb/i.test(version) ? "mariadb" : "mysql")
