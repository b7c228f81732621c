import { assert, describe, it } from "@effect/vitest"
import * as SessionError from "@sessionfx/session/SessionError"

/** A mysql2 error as the driver raises it (`errno`, `code`, `sqlMessage`, `sqlState`). */
const driverError = (errno: number, code: string, sqlMessage: string) =>
  Object.assign(new Error(sqlMessage), { errno, code, sqlMessage, sqlState: "HY000", fatal: false })

const classify = (errno: number, code: string, sqlMessage: string) =>
  SessionError.classify(driverError(errno, code, sqlMessage), "COMMIT")

describe("classify: clusters and distributed servers", () => {
  it("Galera certification failure (1213 at COMMIT) is a retryable Deadlock", () => {
    const e = classify(1213, "ER_LOCK_DEADLOCK", "Deadlock found when trying to get lock; try restarting transaction")
    assert.strictEqual(e._tag, "Deadlock")
    assert.isTrue(SessionError.isRetryable(e))
  })

  it("Galera's 1047 'WSREP has not yet prepared node' is a retryable SerializationFailure, not a lost connection", () => {
    const e = classify(1047, "ER_UNKNOWN_COM_ERROR", "WSREP has not yet prepared node for application use")
    assert.strictEqual(e._tag, "SerializationFailure")
    assert.isTrue(SessionError.isRetryable(e))
    assert.strictEqual((e as SessionError.SerializationFailure).errno, 1047)
    assert.match(e.message, /not ready/)
  })

  it("MySQL's own 1047 'Unknown command' is not retryable", () => {
    const e = classify(1047, "ER_UNKNOWN_COM_ERROR", "Unknown command")
    assert.isFalse(SessionError.isRetryable(e))
  })

  it("MySQL Group Replication 3101 is a retryable SerializationFailure", () => {
    const e = classify(
      3101,
      "ER_TRANSACTION_ROLLBACK_DURING_COMMIT",
      "Plugin instructed the server to rollback the current transaction."
    )
    assert.strictEqual(e._tag, "SerializationFailure")
    assert.isTrue(SessionError.isRetryable(e))
  })

  it("TiDB write conflicts (8002, 9007) are retryable SerializationFailures", () => {
    for (const errno of [8002, 9007]) {
      const e = classify(errno, "UNKNOWN_CODE_PLEASE_REPORT", "Write conflict, txnStartTS=1, conflictStartTS=2")
      assert.strictEqual(e._tag, "SerializationFailure")
      assert.isTrue(SessionError.isRetryable(e))
    }
  })
})
