/**
 * A user's first hour: options are checked when the Engine layer is built (a typed `InvalidOption` naming the option
 * and the accepted range), and connection failures say what to do and whether waiting can help; on MariaDB and
 * PostgreSQL (see `support/dialects.ts`).
 */
import { assert, describe, expect, it, layer } from "@effect/vitest"
import { Engine, Session, SessionError } from "@sessionfx/session"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import { DbTag, dialects } from "./support/dialects.js"

const buildFailure = (options: Engine.EngineOptions) =>
  Effect.gen(function* () {
    const exit = yield* Effect.exit(Effect.scoped(Layer.build(Engine.layer(options))))
    assert.isTrue(Exit.isFailure(exit), "the layer was built")
    if (Exit.isSuccess(exit) || exit.cause._tag !== "Fail") return assert.fail(`not a typed failure: ${exit}`)
    return exit.cause.error
  })

// nothing listens on port 9 of 192.0.2.1 (TEST-NET-1): a check that fails must fail before any connection attempt
const nowheres = [
  ["mariadb", "mysql://app:secret@192.0.2.1:9/app"],
  ["postgres", "postgres://app:secret@192.0.2.1:9/app"]
] as const

for (const [db, nowhere] of nowheres)
  describe(`Engine options (${db})`, () => {
    const invalid: ReadonlyArray<readonly [string, Engine.EngineOptions, RegExp]> = [
      ["pool.size", { pool: { size: NaN } }, /integer from 1 to 10000, got NaN \(NaN is what Number\(\) gives/],
      ["pool.size", { pool: { size: 0 } }, /integer from 1 to 10000, got 0$/],
      ["pool.size", { pool: { size: -1 } }, /got -1$/],
      ["pool.size", { pool: { size: 1.5 } }, /got 1.5$/],
      ["pool.minIdle", { pool: { size: 2, minIdle: 3 } }, /from 0 to pool.size \(2\), got 3/],
      ["pool.queueLimit", { pool: { queueLimit: -1 } }, /zero \(no limit\) or more, got -1/],
      ["pool.acquireTimeout", { pool: { acquireTimeout: "banana" as any } }, /a duration .* got "banana"/],
      ["pool.acquireTimeout", { pool: { acquireTimeout: -5 } }, /at least 1 ms .* got -5/],
      ["pool.acquireTimeout", { pool: { acquireTimeout: 0 } }, /at least 1 ms .* got 0/],
      ["pool.acquireTimeout", { pool: { acquireTimeout: "30 days" } }, /at most 2147483647 ms/],
      ["pool.acquireTimeout", { pool: { acquireTimeout: Duration.infinity } }, /at most/],
      ["pool.idleTimeout", { pool: { idleTimeout: "0 millis" } }, /at least 1 ms/],
      ["pool.validateAfterIdle", { pool: { validateAfterIdle: -1 } }, /zero or more/],
      ["connectTimeout", { connectTimeout: 0 }, /at least 1 ms/],
      ["shutdownTimeout", { shutdownTimeout: NaN }, /zero or more.*got NaN/],
      ["lockWaitTimeout", { lockWaitTimeout: "-1 seconds" as any }, /a duration/],
      ["statementTimeout", { statementTimeout: 0 }, /at least 1 ms/],
      ["commitTimeout", { commitTimeout: 0 } as Record<string, unknown> as Engine.EngineOptions, /at least 1 ms/],
      ["longUnitThreshold", { longUnitThreshold: -1 } as Record<string, unknown> as Engine.EngineOptions, /a duration/],
      ["port", { port: 70_000 }, /integer from 1 to 65535, got 70000/],
      ["isolation", { isolation: "SNAPSHOT" as any }, /SERIALIZABLE/]
    ]
    for (const [option, options, message] of invalid) {
      it.live(`${option} = ${JSON.stringify(Object.values(options)[0])} is an InvalidOption naming it`, () =>
        Effect.gen(function* () {
          const error = yield* buildFailure({ url: nowhere, connectTimeout: "1 second", ...options })
          assert.strictEqual(error._tag, "InvalidOption")
          if (error._tag !== "InvalidOption") return
          assert.strictEqual(error.option, option)
          assert.isFalse(error.retryable)
          expect(error.message).toMatch(new RegExp(`^Engine option ${option.replace(".", "\\.")}: expected `))
          expect(error.message).toMatch(message)
          expect(error.message).not.toContain("secret")
        })
      )
    }

    it.live("from Config, an unset variable read as a number is refused before any connection", () =>
      Effect.gen(function* () {
        const t0 = Date.now()
        const error = yield* buildFailure({
          url: nowhere,
          pool: { size: Number(process.env.SESSIONFX_UNSET_VARIABLE) }
        })
        assert.strictEqual(error._tag, "InvalidOption")
        assert.isBelow(Date.now() - t0, 500)
      })
    )
  })

/** An error as the pg driver hands it to the core (marked as its own, with a SQLSTATE). */
const pgError = (code: string) =>
  Object.assign(new Error("refused"), { code, [Symbol.for("@sessionfx/session/pgError")]: true })

describe("connection errors say whether waiting helps", () => {
  // MariaDB's errnos; PostgreSQL's SQLSTATEs are the next test
  it("wrong password, unknown database, no access: not retryable, with advice", () => {
    for (const [errno, advice] of [
      [1045, "check the username and password"],
      [1049, "the database does not exist"],
      [1044, "GRANT"],
      [1130, "'user'@'%'"]
    ] as const) {
      const error = SessionError.classify({ errno, code: "ER", message: "refused" })
      if (error._tag !== "ConnectionError") return assert.fail(`${errno} is a ${error._tag}`)
      assert.isFalse(error.retryable, String(errno))
      assert.isFalse(SessionError.isRetryable(error))
      expect(error.message).toContain(advice)
    }
    // a server that is momentarily full, or not up yet, may accept a later attempt
    assert.isTrue(SessionError.isRetryable(SessionError.classify({ errno: 1040, message: "Too many connections" })))
    assert.isTrue(new SessionError.ConnectionError({ message: "x", cause: { code: "ECONNREFUSED" } }).retryable)
    assert.isTrue(new SessionError.ConnectionError({ message: "x" }).retryable)
    assert.isFalse(new SessionError.ConnectionError({ message: "x", retryable: false }).retryable)
  })

  it("PostgreSQL: wrong password, refused by pg_hba, unknown database: not retryable, with advice", () => {
    for (const [code, advice] of [
      ["28P01", "check the username and password"],
      ["28000", "pg_hba.conf"],
      ["3D000", "the database does not exist"]
    ] as const) {
      const error = SessionError.classify(pgError(code))
      if (error._tag !== "ConnectionError") return assert.fail(`${code} is a ${error._tag}`)
      assert.isFalse(error.retryable, code)
      expect(error.message).toContain(advice)
    }
    // too many connections, or a server starting up, may accept a later attempt
    assert.isTrue(SessionError.isRetryable(SessionError.classify(pgError("53300"))))
  })
})

for (const [name, dbLayer] of dialects) {
  layer(dbLayer, { timeout: 120_000, excludeTestServices: true })(`against a server (${name})`, (it) => {
    it.effect("wrong password: not retryable, so retry: true does not retry it", () =>
      Effect.gen(function* () {
        const db = yield* DbTag
        const app = new URL(Redacted.value(db.url))
        const error = yield* buildFailure({
          url: db.urlAs(decodeURIComponent(app.username), "wrong-password")
        })
        assert.strictEqual(error._tag, "ConnectionError")
        assert.isFalse(error.retryable)
        // each server's words for it: `Access denied for user …`, `password authentication failed for user …`
        expect(error.message).toMatch(
          db.name === "postgres"
            ? /password authentication failed.*check the username and password/i
            : /access denied.*check the username and password/i
        )
      })
    )

    it.effect("unknown database: not retryable, says to create it", () =>
      Effect.gen(function* () {
        const db = yield* DbTag
        // as the superuser, who may use any database that exists
        const error = yield* buildFailure({ url: db.adminUrl("no_such_database") })
        assert.strictEqual(error._tag, "ConnectionError")
        assert.isFalse(error.retryable)
        expect(error.message).toContain("the database does not exist")
      })
    )

    it.scoped("an unencoded @ in the url's password gets a hint to percent-encode it; encoded, it connects", () =>
      Effect.gen(function* () {
        const db = yield* DbTag
        const password = "p@ss/w#rd"
        yield* db.createUser("encoded", password)
        const error = yield* buildFailure({ url: db.urlAs("encoded", password), connectTimeout: "2 seconds" })
        assert.strictEqual(error._tag, "ConnectionError")
        expect(error.message).toContain("percent-encode the password")
        expect(error.message).not.toContain(password)

        const url = db.urlAs("encoded", encodeURIComponent(password))
        const one = yield* Session.transact(Effect.succeed(1)).pipe(Effect.provide(Engine.layer({ url })))
        assert.strictEqual(one, 1)
      })
    )

    it.effect("Duration.infinity where it means never: idle connections kept, no lifetime, never validated", () =>
      Effect.gen(function* () {
        const db = yield* DbTag
        const one = yield* Session.transact(Effect.succeed(1)).pipe(
          Effect.provide(
            Engine.layer({
              url: db.url,
              pool: {
                size: 2,
                idleTimeout: Duration.infinity,
                maxLifetime: Duration.infinity,
                validateAfterIdle: Duration.infinity
              },
              lockWaitTimeout: Duration.infinity
            })
          )
        )
        assert.strictEqual(one, 1)
      })
    )
  })
}
