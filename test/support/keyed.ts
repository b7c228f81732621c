/** The caller's side of exactly-once with keyed units, shared by the keyed suites (test/keyed*.test.ts). */
import { assert } from "@effect/vitest"
import { Session } from "@sessionfx/session"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import { failureOf, rootTag } from "./unit.js"

let keySeq = 0
/** A key unique within the process. */
export const freshKey = (prefix: string) => `${prefix}-${Date.now().toString(36)}-${++keySeq}`

/**
 * The caller's loop of an exactly-once client: run the keyed unit until it succeeds or reports AlreadyApplied; after
 * every attempt whose outcome is unknown, `Session.outcome(key)` must agree with the rows on the server
 * (`applications(key)`: how many times the unit's write is committed).
 */
export const untilApplied = <E, R, R2>(
  key: string,
  applications: (key: string) => Effect.Effect<number, unknown, R2>,
  attempt: (i: number) => Effect.Effect<unknown, E, R>,
  maxAttempts = 25
) =>
  Effect.gen(function* () {
    const tags: Array<string> = []
    for (let i = 0; i < maxAttempts; i++) {
      const exit = yield* Effect.exit(attempt(i))
      if (Exit.isSuccess(exit)) return { tags: [...tags, "success"], attempts: i + 1 }
      const tag = Exit.isInterrupted(exit) ? "interrupted" : rootTag(failureOf(exit as Exit.Exit<never, unknown>, key))
      tags.push(tag)
      if (tag === "AlreadyApplied") return { tags, attempts: i + 1 }
      if (tag === "CommitOutcomeUnknown" || tag === "TimeoutException" || tag === "interrupted") {
        const said = yield* Effect.exit(Session.outcome(key))
        if (Exit.isSuccess(said)) {
          const rows = yield* Effect.orDie(applications(key))
          assert.strictEqual(
            said.value === "committed",
            rows === 1,
            `${key}: Session.outcome says ${said.value} while ${rows} row(s) are committed (after ${tag})`
          )
        }
      }
    }
    return assert.fail(`${key}: not applied after ${maxAttempts} attempts: ${tags.join(", ")}`)
  })
