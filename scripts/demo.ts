/**
 * Starts a MysqlServer (embedded, or the one in MYSQL_URL), connects with @effect/sql-mysql2, prints what it found
 * and exits; the server is stopped and its files removed on the way out.
 *
 *   node node_modules/.pnpm/node_modules/vite-node/vite-node.mjs scripts/demo.ts
 *
 * The root package has no dependencies, so bare imports cannot be resolved from `scripts/`: modules are imported
 * through the paths of @sessionfx/testing, which resolve to the same files (and module instances) as its own imports.
 */
import * as NodeRuntime from "../packages/testing/node_modules/@effect/platform-node/dist/esm/NodeRuntime.js"
import * as MysqlClient from "../packages/testing/node_modules/@effect/sql-mysql2/dist/esm/MysqlClient.js"
import * as Console from "../packages/testing/node_modules/effect/dist/esm/Console.js"
import * as Effect from "../packages/testing/node_modules/effect/dist/esm/Effect.js"
import * as Layer from "../packages/testing/node_modules/effect/dist/esm/Layer.js"
import { MysqlServer } from "../packages/testing/src/index.js"

const started = Date.now()

const program = Effect.gen(function* () {
  const server = yield* MysqlServer.MysqlServer
  const ready = Date.now() - started
  const sql = yield* MysqlClient.MysqlClient
  const [row] = yield* sql<{ readonly version: string; readonly user: string }>`
    SELECT VERSION() AS version, CURRENT_USER() AS user
  `
  yield* Console.log(`${server.kind} ${server.flavor} server ${row?.version} at ${server.host}:${server.port}`)
  yield* Console.log(`connected as ${row?.user} to database "${server.database}" (server ready in ${ready} ms)`)
})

const SqlLive = Layer.unwrapEffect(
  Effect.map(MysqlServer.MysqlServer, (server) => MysqlClient.layer({ url: server.url }))
)

program.pipe(Effect.provide(SqlLive.pipe(Layer.provideMerge(MysqlServer.layer()))), NodeRuntime.runMain)
