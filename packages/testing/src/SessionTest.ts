/**
 * A unit of work that always rolls back: tests share one database and leave nothing behind.
 *
 * @since 0.1.0
 */
import { Session } from "@sessionfx/session"

/**
 * `Session.layer` with `rollbackOnly`: everything the program wrote is rolled back when it ends, even on success.
 * It contains everything the code under test does with the same Engine: a unit with `propagation: "new"` runs as a
 * savepoint of the test's transaction, `sql.reserve` hands out the test's connection, and statements of forked
 * fibers join it too. A nested unit the test's transaction cannot honour (read-only, another isolation level) fails
 * with `InvalidOption` saying so.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Omit<Session.Options, "rollbackOnly"> = {}) =>
  Session.layer({ ...options, rollbackOnly: true, containAll: true } as Session.Options)

/**
 * @since 0.1.0
 * @category layers
 */
export const SessionTest = layer()
