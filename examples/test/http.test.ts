/**
 * The README's ManagedRuntime example: a response on every path, typed errors as statuses, a unit per request.
 */
import { assert, layer } from "@effect/vitest"
import { MysqlServer } from "@sessionfx/testing"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Redacted from "effect/Redacted"
import { balances, createAccounts } from "../src/Accounts.js"
import * as Http from "../src/http.js"
import { EngineLive } from "../src/readme.js"

layer(MysqlServer.layerEngine(), { excludeTestServices: true })("ManagedRuntime over node:http", (it) => {
  it.effect("200 committed, 409 overdrawn and rolled back, 400 malformed, 404 elsewhere; concurrent units", () =>
    Effect.gen(function* () {
      const server = yield* MysqlServer.MysqlServer
      yield* createAccounts([100, 0])
      const config = ConfigProvider.fromMap(new Map([["DATABASE_URL", Redacted.value(server.url)]]))
      const runtime = ManagedRuntime.make(EngineLive.pipe(Layer.provide(Layer.setConfigProvider(config))))
      const result = yield* Http.exercise(runtime)
      assert.deepStrictEqual(result, {
        ok: 200,
        overdrawn: 409,
        overdrawnBody: { error: "account 1 would be overdrawn" },
        invalid: 400,
        concurrent: [200, 200, 200, 200, 200, 200, 200, 200],
        notFound: 404
      })
      // the overdraft rolled back; the concurrent transfers (4 each way) each committed once
      assert.strictEqual(yield* balances, "1:70 2:30")
    })
  )
})
