/**
 * The one door from above the seam to a driver's errors: `SessionError` describes a driver error without knowing
 * which driver raised it. Each driver marks its errors (the pg driver with `PG_ERROR`); the rest are MySQL's.
 *
 * @internal
 */
import * as mysql from "./mysql/errors.js"
import * as pg from "./pg/errors.js"
import type { ConnectAdvice, ErrorDescription } from "./types.js"

const of = (cause: unknown) => (pg.isPgError(cause) ? pg : mysql)

/** What a driver error is. @internal */
export const describe = (cause: unknown): ErrorDescription => of(cause).describe(cause)

/** Advice for a driver error met while opening a connection. @internal */
export const connectAdvice = (cause: unknown): ConnectAdvice | undefined => of(cause).connectAdvice(cause)

/** Whether a driver error means the connection can no longer be used. @internal */
export const isFatal = (cause: unknown): boolean => of(cause).isFatal(cause)
