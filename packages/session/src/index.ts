/**
 * @since 0.1.0
 */
import * as Session from "./Session.js"

/**
 * @since 0.1.0
 */
export * as Engine from "./Engine.js"

/**
 * @since 0.1.0
 */
export * as Session from "./Session.js"

/**
 * @since 0.1.0
 */
export * as SessionError from "./SessionError.js"

/**
 * The default unit of work: `program.pipe(Effect.provide(SessionLive))`.
 *
 * @since 0.1.0
 * @category layers
 */
export const SessionLive = Session.layer()
