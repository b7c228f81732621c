/**
 * The outermost HTTP middleware (`Http.answered`) on a real server: whatever a handler does — die, fail with
 * something that is not an answer, or no route at all — the client gets a status and a JSON body, and a defect is
 * logged at ERROR with its cause, never at INFO (issue 23, item 6 and the operator items).
 */
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServer from "@effect/platform/HttpServer"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { assert, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import * as HashSet from "effect/HashSet"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import { createServer } from "node:http"
import * as Http from "../src/Http.js"

it.scoped("defects are a JSON 500 logged at ERROR; failures and missing routes get JSON bodies", () =>
  Effect.gen(function* () {
    const router = HttpRouter.empty.pipe(
      HttpRouter.get("/die", Effect.die(new Error("boom in a handler"))),
      HttpRouter.get(
        "/throw",
        Effect.sync((): HttpServerResponse.HttpServerResponse => {
          throw new RangeError("Maximum call stack size exceeded")
        })
      ),
      HttpRouter.get("/fail", Effect.fail(new Error("not an answer"))),
      HttpRouter.get("/ok", HttpServerResponse.json({ ok: true }))
    )
    const logs: Array<string> = []
    const context = yield* Layer.build(
      HttpServer.serve(router, Http.answered).pipe(
        Layer.provideMerge(NodeHttpServer.layer(() => createServer(), { port: 0, host: "127.0.0.1" }))
      )
    ).pipe(
      Effect.locally(FiberRef.currentMinimumLogLevel, LogLevel.Info),
      Effect.locally(FiberRef.currentLoggers, HashSet.make(Logger.map(Logger.logfmtLogger, (l) => void logs.push(l))))
    )
    const address = Context.get(context, HttpServer.HttpServer).address as HttpServer.TcpAddress
    const get = (path: string) =>
      Effect.promise(() =>
        fetch(`http://127.0.0.1:${address.port}${path}`).then(async (r) => ({ status: r.status, text: await r.text() }))
      )
    for (const path of ["/die", "/throw"]) {
      const r = yield* get(path)
      assert.strictEqual(r.status, 500, path)
      assert.deepStrictEqual(JSON.parse(r.text), { _tag: "InternalError", message: "internal error" })
      assert.notInclude(r.text, "boom")
    }
    const failed = yield* get("/fail")
    assert.strictEqual(failed.status, 500)
    assert.strictEqual(JSON.parse(failed.text)._tag, "InternalError")
    const missing = yield* get("/nowhere")
    assert.deepStrictEqual([missing.status, JSON.parse(missing.text)._tag], [404, "NotFound"])
    assert.strictEqual((yield* get("/ok")).status, 200)
    const errors = logs.filter((l) => l.includes("level=ERROR"))
    assert.isTrue(errors.some((l) => l.includes("http.path=/die") && l.includes("boom in a handler")))
    assert.isTrue(errors.some((l) => l.includes("http.path=/throw") && l.includes("Maximum call stack")))
    assert.isFalse(logs.some((l) => l.includes("level=INFO") && l.includes("boom")))
    assert.isTrue(logs.some((l) => l.includes("level=INFO") && l.includes("http.path=/ok")))
  })
)
