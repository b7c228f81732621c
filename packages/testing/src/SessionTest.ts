/**
 * A unit of work that always rolls back: tests share one database and leave nothing behind.
 *
 * @since 0.1.0
 */
import { Session } from "@sessionfx/session"

/**
 * `Session.layer` with `rollbackOnly`: everything the program wrote is rolled back when it ends, even on success.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Omit<Session.Options, "rollbackOnly"> = {}) =>
  Session.layer({ ...options, rollbackOnly: true })

/**
 * @since 0.1.0
 * @category layers
 */
export const SessionTest = layer()
