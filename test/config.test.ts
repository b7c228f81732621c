/**
 * Bad configuration fails fast, with a typed ConnectionError whose message never contains the password.
 */
import { assert, layer } from "@effect/vitest"
import { Engine } from "@sessionfx/session"
import { MysqlServer } from "@sessionfx/testing"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Net from "node:net"

const SECRET = "s3cr3t-Pa55word-never-printed"

/** A loopback port nobody listens on: bound, then closed. */
const refusedPort = Effect.async<number>((resume) => {
  const s = Net.createServer()
  s.listen(0, "127.0.0.1", () => {
    const port = (s.address() as Net.AddressInfo).port
    s.close(() => resume(Effect.succeed(port)))
  })
})

const expectConnectionError = (options: Engine.EngineOptions, withinMs: number) =>
  Effect.gen(function* () {
    const started = Date.now()
    const exit = yield* Effect.exit(Effect.scoped(Layer.build(Engine.layer(options))))
    const took = Date.now() - started
    assert.isTrue(Exit.isFailure(exit), "the Engine must not start")
    if (Exit.isSuccess(exit)) return
    const error = exit.cause._tag === "Fail" ? exit.cause.error : undefined
    assert.strictEqual(error?._tag, "ConnectionError", String(exit.cause))
    assert.notInclude(error!.message, SECRET)
    assert.notInclude(JSON.stringify(error), SECRET)
    assert.notInclude(String(error), SECRET)
    assert.isAtMost(took, withinMs, `took ${took} ms`)
  })

layer(MysqlServer.layer(), { timeout: 120_000, excludeTestServices: true })("bad configuration", (it) => {
  it.effect("malformed URL", () =>
    Effect.gen(function* () {
      yield* expectConnectionError({ url: Redacted.make(`mysql://app:${SECRET}@[not-a-host/db`) }, 1_000)
      yield* expectConnectionError({ url: `http://app:${SECRET}@127.0.0.1/db` }, 1_000)
    })
  )

  it.effect("wrong password", () =>
    Effect.gen(function* () {
      const server = yield* MysqlServer.MysqlServer
      yield* expectConnectionError(
        {
          host: server.host,
          port: server.port,
          username: server.username,
          database: server.database,
          password: Redacted.make(SECRET)
        },
        5_000
      )
    })
  )

  it.effect("unreachable host (192.0.2.1, TEST-NET-1) within connectTimeout", () =>
    expectConnectionError({ url: `mysql://app:${SECRET}@192.0.2.1:3306/app`, connectTimeout: "1 second" }, 4_000)
  )

  it.effect("refused port", () =>
    Effect.flatMap(refusedPort, (port) =>
      expectConnectionError({ url: `mysql://app:${SECRET}@127.0.0.1:${port}/app`, connectTimeout: "2 seconds" }, 3_000)
    )
  )
})
