/**
 * A crash of a server made of several processes. PostgreSQL's postmaster puts each child (backends, checkpointer, WAL
 * writer…) in a session of its own, so a SIGKILL of the postmaster's process group reaches the postmaster only: the
 * children notice its death and exit by themselves, a moment later — and a server started in that moment refuses to
 * run ("pre-existing shared memory block is still in use"). Linux only (`/proc`); elsewhere only the group is killed.
 *
 * @internal
 */
import * as Fs from "node:fs"
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import { hardKill, type ServerProcess } from "./serverProcess.js"

/** The state letter of `/proc/<pid>/stat` (`Z` zombie), or `undefined` when there is no such process. */
const stateOf = (pid: number): string | undefined => {
  try {
    return /^\d+ \(.*\) (\S)/.exec(Fs.readFileSync(`/proc/${pid}/stat`, "utf8"))?.[1]
  } catch {
    return undefined
  }
}

const parentOf = (pid: number): number | undefined => {
  try {
    const fields = /^\d+ \(.*\) \S (\d+)/.exec(Fs.readFileSync(`/proc/${pid}/stat`, "utf8"))
    return fields === null ? undefined : Number(fields[1])
  } catch {
    return undefined
  }
}

/** The processes whose parent is `pid` now (none where there is no `/proc`). */
const childrenOf = (pid: number): ReadonlyArray<number> => {
  let entries: ReadonlyArray<string>
  try {
    entries = Fs.readdirSync("/proc")
  } catch {
    return []
  }
  return entries.filter((e) => /^\d+$/.test(e) && parentOf(Number(e)) === pid).map(Number)
}

const signal = (pid: number, sig: NodeJS.Signals) => {
  try {
    process.kill(pid, sig)
  } catch {
    // already gone
  }
}

/**
 * SIGKILLs `proc` and its children, like a crash: the parent is stopped first (it cannot start another child
 * meanwhile), then every child and the parent are killed; returns once the children have exited (a zombie has
 * exited: it holds no memory), bounded by 5 seconds.
 *
 * @internal
 */
export const hardKillTree = (proc: ServerProcess): Effect.Effect<void> =>
  Effect.gen(function* () {
    if (!proc.isAlive()) return
    signal(proc.pid, "SIGSTOP")
    const children = childrenOf(proc.pid)
    for (const child of children) signal(child, "SIGKILL")
    yield* hardKill(proc)
    const alive = () => children.filter((pid) => ![undefined, "Z", "X"].includes(stateOf(pid)))
    yield* Effect.sync(alive).pipe(
      Effect.repeat({ schedule: Schedule.spaced("10 millis"), until: (left) => left.length === 0 }),
      Effect.timeout("5 seconds"),
      Effect.ignore
    )
  })
