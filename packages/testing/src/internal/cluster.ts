import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Mysql from "mysql2"
import { makeEmbedded } from "./server.js"
import type { MysqlServerError } from "./serverError.js"
import { MysqlServerNotInstalled, MysqlServerStartFailed, MysqlServerUnavailable } from "./serverError.js"
import * as Sql from "./serverMysql.js"
import * as Proc from "./serverProcess.js"
import type * as Types from "./types.js"

// like server.ts: waits and polls run on a real clock, also under @effect/vitest's TestClock
const liveClock = Clock.make()
const live = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> => Effect.withClock(self, liveClock)

const loopback = "127.0.0.1"
const randomPassword = (): string => Crypto.randomBytes(18).toString("base64url")

const startFailed = (phase: MysqlServerStartFailed["phase"], reason: string, server?: Types.ServerService) =>
  new MysqlServerStartFailed({
    phase,
    reason,
    exitCode: null,
    signal: null,
    dataDir: server === undefined ? undefined : Option.getOrUndefined(server.dataDir),
    logFile: server === undefined ? undefined : Option.getOrUndefined(server.logFile),
    logTail: server === undefined ? [] : Proc.readLogTail(Option.getOrUndefined(server.logFile), 40)
  })

const serverOptions = (options: Types.ClusterOptions): Types.ServerOptions => ({
  database: options.database,
  username: options.username,
  startTimeout: options.startTimeout,
  stopTimeout: options.stopTimeout,
  searchPath: options.searchPath,
  tmpDir: options.tmpDir
})

const validCount = (name: string, count: number, max: number): Effect.Effect<number, MysqlServerStartFailed> =>
  Number.isInteger(count) && count >= 1 && count <= max
    ? Effect.succeed(count)
    : Effect.fail(startFailed("prepare", `${name} must be an integer from 1 to ${max}, got ${count}`))

/** A copy of a server's service (its `pid` getter included) with more members. */
const extend = <B extends object>(server: Types.ServerService, extra: B): Types.ServerService & B =>
  Object.defineProperties({ ...extra }, Object.getOwnPropertyDescriptors(server)) as unknown as Types.ServerService & B

// -----------------------------------------------------------------------------
// admin statements
// -----------------------------------------------------------------------------

const adminTarget = (server: Types.ServerService) => `mysql://${server.admin.username}:***@${loopback}:${server.port}`

/**
 * Runs one statement as the admin user on a fresh connection (servers restart, so nothing is kept open), bounded by
 * `deadline` (default 30 seconds) from connect to answer.
 */
const adminQuery = <A = Record<string, unknown>>(
  server: Types.ServerService,
  sql: string,
  values: ReadonlyArray<unknown> = [],
  deadline: Duration.Duration = Duration.seconds(30)
): Effect.Effect<ReadonlyArray<A>, MysqlServerUnavailable> =>
  Effect.acquireUseRelease(
    Sql.connect({
      host: loopback,
      port: server.port,
      user: server.admin.username,
      password: Redacted.value(server.admin.password),
      connectTimeout: 5_000
    }),
    (conn) => Sql.query<A>(conn, sql, values, [Redacted.value(server.admin.password)]),
    (conn) => Sql.close(conn)
  ).pipe(
    Effect.timeoutFail({
      duration: deadline,
      onTimeout: () => ({ code: undefined, errno: undefined, message: `no answer within ${Duration.format(deadline)}` })
    }),
    Effect.mapError(
      (error) => new MysqlServerUnavailable({ target: adminTarget(server), code: error.code, reason: error.message })
    )
  )

const statusOf = (rows: ReadonlyArray<Record<string, unknown>>): Record<string, string> => {
  const out: Record<string, string> = {}
  for (const row of rows) {
    out[String(row.Variable_name)] = String(row.Value)
  }
  return out
}

/** Runs `check` every 100 ms until it answers `Some`; fails with `onTimeout()` after `timeout`. */
const pollUntil = <A, S>(
  check: Effect.Effect<Option.Option<A>>,
  timeout: Duration.DurationInput,
  onTimeout: () => S
): Effect.Effect<A, S> =>
  check.pipe(
    Effect.flatMap(
      Option.match({
        onNone: () => Effect.zipRight(Effect.sleep(Duration.millis(100)), Effect.fail("pending" as const)),
        onSome: Effect.succeed
      })
    ),
    Effect.eventually,
    Effect.timeoutFail({ duration: timeout, onTimeout })
  )

// -----------------------------------------------------------------------------
// primary and replicas
// -----------------------------------------------------------------------------

const replicaStatus = (server: Types.ServerService): Effect.Effect<Types.ReplicationStatus, MysqlServerError> =>
  Effect.zip(
    adminQuery<Record<string, unknown>>(server, "SHOW SLAVE STATUS"),
    adminQuery<{ readonly pos: string }>(server, "SELECT @@GLOBAL.gtid_slave_pos AS pos")
  ).pipe(
    Effect.map(([rows, [position]]) => {
      const row = rows[0] ?? {}
      const behind = row.Seconds_Behind_Master
      return {
        ioRunning: row.Slave_IO_Running === "Yes",
        sqlRunning: row.Slave_SQL_Running === "Yes",
        secondsBehind: behind === null || behind === undefined ? null : Number(behind),
        gtidSlavePos: position?.pos ?? "",
        lastError: [row.Last_IO_Error, row.Last_SQL_Error].filter((e) => typeof e === "string" && e !== "").join("; ")
      }
    })
  )

/** @internal */
export const replicated = (
  options: Types.ReplicatedOptions = {}
): Effect.Effect<Types.Replicated, MysqlServerError, Scope.Scope> =>
  live(
    Effect.gen(function* () {
      const count = yield* validCount("replicas", options.replicas ?? 2, 8)
      const startTimeout = Duration.decode(options.startTimeout ?? Duration.seconds(60))
      // one set of users for all servers: the primary's bootstrap replays harmlessly on a replica
      const credentials = { password: randomPassword(), adminPassword: randomPassword() }
      const base = serverOptions(options)
      const binlog = ["--log-bin=mysql-bin", "--binlog-format=ROW", "--relay-log=relay-bin"]
      const servers = yield* Effect.all(
        Array.from({ length: count + 1 }, (_, i) =>
          makeEmbedded(
            {
              ...base,
              serverArgs: [
                ...binlog,
                `--server-id=${i + 1}`,
                // a replica applies only what it is sent: the application user cannot write to it
                ...(i > 0 ? ["--read-only=ON"] : []),
                ...(options.serverArgs ?? [])
              ]
            },
            credentials
          )
        ),
        { concurrency: "unbounded" }
      )
      const primary = servers[0]!
      const [position] = yield* adminQuery<{ readonly pos: string }>(primary, "SELECT @@GLOBAL.gtid_binlog_pos AS pos")
      const replicas: Array<Types.Replica> = []
      for (const server of servers.slice(1)) {
        // start after the primary's own bootstrap (the replica ran the same one) and follow from there
        yield* Effect.forEach(
          [
            Mysql.format("SET GLOBAL gtid_slave_pos = ?", [position?.pos ?? ""]),
            Mysql.format(
              "CHANGE MASTER TO MASTER_HOST = ?, MASTER_PORT = ?, MASTER_USER = ?, MASTER_PASSWORD = ?, " +
                "MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1, MASTER_HEARTBEAT_PERIOD = 1",
              [loopback, primary.port, primary.admin.username, Redacted.value(primary.admin.password)]
            ),
            "START SLAVE"
          ],
          (sql) => adminQuery(server, sql),
          { discard: true }
        ).pipe(
          Effect.mapError((error) => startFailed("bootstrap", `cannot start replication: ${error.message}`, server))
        )
        replicas.push(makeReplica(server, primary))
      }
      yield* Effect.forEach(
        replicas,
        (replica) =>
          pollUntil(
            replicaStatus(replica).pipe(
              Effect.map((s) => (s.ioRunning && s.sqlRunning ? Option.some(s) : Option.none())),
              Effect.orElseSucceed(() => Option.none())
            ),
            startTimeout,
            () => startFailed("bootstrap", `replication did not start within ${Duration.format(startTimeout)}`, replica)
          ),
        { discard: true }
      )
      return { primary, replicas, servers: [primary, ...replicas] }
    })
  )

const makeReplica = (server: Types.ServerService, primary: Types.ServerService): Types.Replica => {
  const run = (sql: string) => live(Effect.asVoid(adminQuery(server, sql)))
  const waitForGtid = (gtid: string, timeout: Duration.DurationInput) => {
    const wait = Duration.decode(timeout)
    return live(
      adminQuery<{ readonly r: number | null }>(
        server,
        "SELECT MASTER_GTID_WAIT(?, ?) AS r",
        [gtid, Duration.toMillis(wait) / 1000],
        Duration.sum(wait, Duration.seconds(30))
      ).pipe(Effect.map((rows) => rows[0]?.r !== null && rows[0]?.r !== undefined && Number(rows[0].r) === 0))
    )
  }
  return extend(server, {
    stopSqlThread: run("STOP SLAVE SQL_THREAD"),
    startSqlThread: run("START SLAVE SQL_THREAD"),
    stopReplication: run("STOP SLAVE"),
    startReplication: run("START SLAVE"),
    replicationStatus: live(replicaStatus(server)),
    waitForGtid,
    waitCaughtUp: (timeout: Duration.DurationInput) =>
      live(
        adminQuery<{ readonly pos: string }>(primary, "SELECT @@GLOBAL.gtid_binlog_pos AS pos").pipe(
          Effect.flatMap((rows) => waitForGtid(rows[0]?.pos ?? "", timeout))
        )
      )
  })
}

// -----------------------------------------------------------------------------
// Galera
// -----------------------------------------------------------------------------

/** The GTID domain of a cluster's replicated writes (`wsrep_gtid_domain_id`) when `gtid` is on. */
const galeraGtidDomain = 1

const providerCandidates = [
  "/usr/lib/galera/libgalera_smm.so",
  "/usr/lib/galera4/libgalera_smm.so",
  "/usr/lib/libgalera_smm.so"
]

const galeraStatus = (server: Types.ServerService): Effect.Effect<Types.GaleraStatus, MysqlServerError> =>
  adminQuery<Record<string, unknown>>(
    server,
    "SHOW GLOBAL STATUS WHERE Variable_name IN " +
      "('wsrep_ready', 'wsrep_cluster_size', 'wsrep_local_state_comment', 'wsrep_cluster_status', 'wsrep_connected')"
  ).pipe(Effect.map((rows) => toGaleraStatus(statusOf(rows))))

const toGaleraStatus = (status: Record<string, string>): Types.GaleraStatus => ({
  ready: status.wsrep_ready === "ON",
  connected: status.wsrep_connected === "ON",
  clusterSize: Number(status.wsrep_cluster_size ?? 0),
  clusterStatus: status.wsrep_cluster_status ?? "",
  state: status.wsrep_local_state_comment ?? ""
})

/** Root's first connection to a starting node: the node counts as started once it is synced with the cluster. */
const awaitSynced = (conn: Mysql.Connection): Effect.Effect<void, string> =>
  Sql.query<Record<string, unknown>>(
    conn,
    "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_local_state_comment')"
  ).pipe(
    Effect.map(statusOf),
    Effect.flatMap((s) =>
      s.wsrep_ready === "ON" && s.wsrep_local_state_comment === "Synced"
        ? Effect.void
        : Effect.fail(`not synced (${s.wsrep_local_state_comment ?? "?"})`)
    ),
    Effect.mapError((e) => (typeof e === "string" ? e : e.message)),
    Effect.retry(Schedule.spaced(Duration.millis(50)))
  )

const distinctFreePorts = (n: number, taken: Set<number>): Effect.Effect<Array<number>, string> =>
  Effect.gen(function* () {
    const ports: Array<number> = []
    while (ports.length < n) {
      const port = yield* Proc.freePort
      if (!taken.has(port)) {
        taken.add(port)
        ports.push(port)
      }
    }
    return ports
  })

/** @internal */
export const galera = (options: Types.GaleraOptions = {}): Effect.Effect<Types.Galera, MysqlServerError, Scope.Scope> =>
  live(
    Effect.gen(function* () {
      const count = yield* validCount("nodes", options.nodes ?? 3, 9)
      const provider = options.provider ?? providerCandidates.find((file) => Fs.existsSync(file))
      if (provider === undefined || !Fs.existsSync(provider)) {
        return yield* new MysqlServerNotInstalled({
          missing: "the Galera provider libgalera_smm.so (Debian: apt-get install -y galera-4 rsync)",
          searched: options.provider !== undefined ? [options.provider] : providerCandidates,
          isRoot: Proc.isRoot()
        })
      }
      const startTimeout = Duration.decode(options.startTimeout ?? Duration.seconds(90))
      const gtid = options.gtid ?? true
      const credentials = { password: randomPassword(), adminPassword: randomPassword() }
      const taken = new Set<number>()
      const ports = yield* Effect.forEach(Array.from({ length: count }), () => distinctFreePorts(3, taken)).pipe(
        Effect.mapError((reason) => startFailed("prepare", `no free port: ${reason}`))
      )
      const clusterAddress = `gcomm://${ports.map(([gcomm]) => `${loopback}:${gcomm}`).join(",")}`
      const clusterName = `sessionfx-${Crypto.randomBytes(4).toString("hex")}`
      const providerOptions = [
        "gcache.size=16M",
        "gcache.page_size=16M",
        // a crashed node is evicted in ~4-5 s (Galera defaults: 5-15 s); not shorter, or a node starved of CPU on a busy
        // machine would be evicted too
        "evs.inactive_check_period=PT0.5S",
        "evs.suspect_timeout=PT4S",
        "evs.inactive_timeout=PT8S",
        ...(options.providerOptions ?? [])
      ]
      let bootstrapped = false
      const nodes: Array<Types.GaleraNode> = []
      const startNode = (index: number) => {
        const [gcomm, ist, sst] = ports[index]!
        const first = index === 0
        return makeEmbedded(
          {
            ...serverOptions(options),
            startTimeout,
            serverArgs: [
              "--wsrep-on=ON",
              `--wsrep-provider=${provider}`,
              `--wsrep-cluster-name=${clusterName}`,
              `--wsrep-node-name=node${index + 1}`,
              `--wsrep-node-address=${loopback}`,
              `--wsrep-cluster-address=${clusterAddress}`,
              `--wsrep-provider-options=${[`gmcast.listen_addr=tcp://${loopback}:${gcomm}`, `ist.recv_addr=${loopback}:${ist}`, ...providerOptions].join(";")}`,
              "--wsrep-sst-method=rsync",
              `--wsrep-sst-receive-address=${loopback}:${sst}`,
              "--wsrep-slave-threads=2",
              ...(gtid
                ? [
                    // cluster-wide GTIDs: the same on every node, reported in a COMMIT's OK packet (last_gtid) and
                    // waited for with WSREP_SYNC_WAIT_UPTO_GTID; local-only writes get a domain of their node
                    "--log-bin=mysql-bin",
                    "--log-slave-updates=ON",
                    "--wsrep-gtid-mode=ON",
                    `--wsrep-gtid-domain-id=${galeraGtidDomain}`,
                    "--server-id=1",
                    `--gtid-domain-id=${100 + index}`
                  ]
                : []),
              "--binlog-format=ROW",
              "--default-storage-engine=InnoDB",
              "--innodb-autoinc-lock-mode=2",
              ...(options.serverArgs ?? [])
            ]
          },
          {
            ...credentials,
            // the rsync state transfer runs its daemon without changing user: the node must not run as root
            runAs: "mysql",
            startArgs: () => (first && !bootstrapped ? ["--wsrep-new-cluster"] : []),
            awaitReady: awaitSynced
          }
        ).pipe(
          Effect.tap(() =>
            Effect.sync(() => {
              if (first) bootstrapped = true
            })
          )
        )
      }
      // node 1 bootstraps; the joiners start together and queue for a donor (a joiner retries its state transfer
      // request every second while no synced node is free): 2-4 s faster than one by one for 3 nodes
      nodes.push(makeGaleraNode(yield* startNode(0), 0))
      const joiners = yield* Effect.forEach(
        Array.from({ length: count - 1 }, (_, i) => i + 1),
        (index) => Effect.map(startNode(index), (server) => makeGaleraNode(server, index)),
        { concurrency: "unbounded" }
      )
      nodes.push(...joiners)
      const waitForClusterSize = (size: number, timeout: Duration.DurationInput = Duration.seconds(60)) =>
        live(
          Effect.gen(function* () {
            let last = "no node answered"
            return yield* pollUntil(
              Effect.gen(function* () {
                const seen: Array<string> = []
                for (const node of nodes) {
                  if (Option.isNone(node.pid)) continue
                  const status = yield* Effect.option(node.status)
                  if (Option.isNone(status)) {
                    seen.push(`node${node.index + 1}: no answer`)
                    continue
                  }
                  const s = status.value
                  seen.push(`node${node.index + 1}: size ${s.clusterSize}, ${s.clusterStatus}, ${s.state}`)
                  if (s.ready && s.clusterSize === size) return Option.some(undefined)
                }
                last = seen.length === 0 ? "no node running" : seen.join("; ")
                return Option.none()
              }),
              timeout,
              () =>
                new MysqlServerUnavailable({
                  target: clusterAddress,
                  code: undefined,
                  reason: `the cluster did not reach size ${size} within ${Duration.format(timeout)} (${last})`
                })
            )
          })
        )
      yield* waitForClusterSize(count, startTimeout)
      return { nodes, clusterAddress, waitForClusterSize }
    })
  )

const makeGaleraNode = (server: Types.ServerService, index: number): Types.GaleraNode =>
  extend(server, {
    index,
    status: live(galeraStatus(server)),
    waitReady: (timeout: Duration.DurationInput = Duration.seconds(60)) =>
      live(
        pollUntil(
          galeraStatus(server).pipe(
            Effect.map((s) => (s.ready && s.state === "Synced" ? Option.some(undefined) : Option.none())),
            Effect.orElseSucceed(() => Option.none())
          ),
          timeout,
          () =>
            new MysqlServerUnavailable({
              target: adminTarget(server),
              code: undefined,
              reason: `node${index + 1} was not synced within ${Duration.format(timeout)}`
            })
        )
      )
  })
