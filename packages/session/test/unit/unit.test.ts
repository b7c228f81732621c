/**
 * The unit's state machine (`internal/unit.ts`), every state × event pair, the end decision and the savepoint
 * decision: pure functions, no server.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Unit from "../../src/internal/unit.js"

const cause = new Error("first")
const later = new Error("later")

const states: Record<string, Unit.Phase> = {
  idle: { _tag: "Idle", epoch: 0 },
  opening: { _tag: "Opening", epoch: 0 },
  open: { _tag: "Open", epoch: 0 },
  abortedOpen: { _tag: "Aborted", epoch: 0, cause, serverOpen: true },
  abortedClosed: { _tag: "Aborted", epoch: 0, cause, serverOpen: false },
  ending: { _tag: "Ending", epoch: 0, disposition: "commit" },
  ended: { _tag: "Ended", epoch: 0 }
}

const events: Record<string, Unit.Event> = {
  began: { _tag: "Began" },
  opening: { _tag: "Opening" },
  notSent: { _tag: "NotSent" },
  doneInTx: { _tag: "StatementDone", inTransaction: true },
  doneNoTx: { _tag: "StatementDone", inTransaction: false },
  doneSilent: { _tag: "StatementDone", inTransaction: undefined },
  openFailed: { _tag: "OpenFailed", cause: later, cancelled: false, lost: false },
  openCancelled: { _tag: "OpenFailed", cause: later, cancelled: true, lost: false },
  openCancelledLost: { _tag: "OpenFailed", cause: later, cancelled: true, lost: true },
  failedTxEnded: { _tag: "Failed", cause: later, inTransaction: false, rollsBack: false },
  failedRolledBack: { _tag: "Failed", cause: later, inTransaction: false, rollsBack: true },
  failedTxKept: { _tag: "Failed", cause: later, inTransaction: true, rollsBack: false },
  failedUnasked: { _tag: "Failed", cause: later, inTransaction: undefined, rollsBack: false },
  lost: { _tag: "Lost", cause: later },
  controlFailed: { _tag: "ControlFailed", cause: later },
  rolledBack: { _tag: "RolledBack" },
  end: { _tag: "End", disposition: "rollback" },
  ended: { _tag: "Ended" }
}

/** What each pair leads to: the tag, whether the server has a transaction open, the abort cause, the epoch. */
type Expect = readonly [tag: Unit.Phase["_tag"], serverOpen: boolean, cause?: unknown, epoch?: number]

const table: Record<string, Record<string, Expect>> = {
  idle: {
    began: ["Open", true],
    opening: ["Opening", true],
    notSent: ["Idle", false],
    // the server says a transaction is open on the unit's connection: it is the unit's (nothing else runs there)
    doneInTx: ["Open", true],
    doneNoTx: ["Idle", false],
    doneSilent: ["Idle", false],
    openFailed: ["Aborted", false, later],
    openCancelled: ["Idle", false],
    openCancelledLost: ["Aborted", false, later],
    failedTxEnded: ["Idle", false],
    failedRolledBack: ["Idle", false],
    failedTxKept: ["Open", true],
    failedUnasked: ["Idle", false],
    lost: ["Aborted", false, later],
    controlFailed: ["Aborted", false, later],
    rolledBack: ["Idle", false],
    end: ["Ending", false],
    ended: ["Ended", false]
  },
  // the unit's first statement is in flight with autocommit off: open until the server says otherwise
  opening: {
    began: ["Opening", true],
    opening: ["Opening", true],
    notSent: ["Idle", false],
    doneInTx: ["Open", true],
    doneNoTx: ["Idle", false],
    doneSilent: ["Open", true],
    openFailed: ["Aborted", true, later],
    openCancelled: ["Aborted", true, later],
    openCancelledLost: ["Aborted", false, later],
    failedTxEnded: ["Idle", false],
    failedRolledBack: ["Aborted", false, later],
    failedTxKept: ["Open", true],
    failedUnasked: ["Aborted", true, later],
    lost: ["Aborted", false, later],
    controlFailed: ["Aborted", true, later],
    rolledBack: ["Idle", false],
    end: ["Ending", false],
    ended: ["Ended", false]
  },
  open: {
    began: ["Open", true],
    opening: ["Open", true],
    notSent: ["Open", true],
    doneInTx: ["Open", true],
    doneNoTx: ["Idle", false, undefined, 1],
    doneSilent: ["Open", true],
    openFailed: ["Aborted", true, later],
    openCancelled: ["Open", true],
    openCancelledLost: ["Aborted", false, later],
    failedTxEnded: ["Aborted", false, later],
    failedRolledBack: ["Aborted", false, later],
    failedTxKept: ["Open", true],
    failedUnasked: ["Aborted", true, later],
    lost: ["Aborted", false, later],
    controlFailed: ["Aborted", true, later],
    rolledBack: ["Idle", false],
    end: ["Ending", false],
    ended: ["Ended", false]
  },
  abortedOpen: {
    began: ["Aborted", true, cause],
    opening: ["Aborted", true, cause],
    notSent: ["Aborted", true, cause],
    doneInTx: ["Aborted", true, cause],
    doneNoTx: ["Aborted", true, cause],
    doneSilent: ["Aborted", true, cause],
    openFailed: ["Aborted", true, cause],
    openCancelled: ["Aborted", true, cause],
    openCancelledLost: ["Aborted", false, cause],
    failedTxEnded: ["Aborted", false, cause],
    failedRolledBack: ["Aborted", false, cause],
    failedTxKept: ["Aborted", true, cause],
    failedUnasked: ["Aborted", true, cause],
    lost: ["Aborted", false, cause],
    controlFailed: ["Aborted", true, cause],
    rolledBack: ["Aborted", false, cause],
    end: ["Ending", false],
    ended: ["Ended", false]
  },
  abortedClosed: {
    began: ["Aborted", false, cause],
    opening: ["Aborted", false, cause],
    notSent: ["Aborted", false, cause],
    doneInTx: ["Aborted", false, cause],
    doneNoTx: ["Aborted", false, cause],
    doneSilent: ["Aborted", false, cause],
    openFailed: ["Aborted", false, cause],
    openCancelled: ["Aborted", false, cause],
    openCancelledLost: ["Aborted", false, cause],
    failedTxEnded: ["Aborted", false, cause],
    failedRolledBack: ["Aborted", false, cause],
    failedTxKept: ["Aborted", false, cause],
    failedUnasked: ["Aborted", false, cause],
    lost: ["Aborted", false, cause],
    controlFailed: ["Aborted", false, cause],
    rolledBack: ["Aborted", false, cause],
    end: ["Ending", false],
    ended: ["Ended", false]
  },
  // once a unit has begun to end, a late answer changes nothing; only its end completes it
  ending: Object.fromEntries(
    Object.keys(events).map((e) => [e, e === "ended" ? (["Ended", false] as const) : (["Ending", false] as const)])
  ),
  ended: Object.fromEntries(Object.keys(events).map((e) => [e, ["Ended", false] as const]))
}

describe("unit state machine: every state × event", () => {
  for (const [stateName, state] of Object.entries(states)) {
    for (const [eventName, event] of Object.entries(events)) {
      const [tag, open, abortCause, epoch] = table[stateName]![eventName]!
      it(`${stateName} + ${eventName} → ${tag}${open ? " (server open)" : ""}`, () => {
        const next = Unit.step(state, event)
        expect(next._tag).toBe(tag)
        expect(Unit.serverOpen(next)).toBe(open)
        expect(Unit.isOpen(next)).toBe(tag === "Idle" || tag === "Opening" || tag === "Open" || tag === "Aborted")
        if (tag === "Aborted") expect(Unit.abortCause(next)).toBe(abortCause)
        expect(next.epoch).toBe(epoch ?? 0)
      })
    }
  }

  it("the first failure is the cause: a unit aborted twice keeps the first", () => {
    const once = Unit.step(states.open!, { _tag: "Failed", cause, inTransaction: false, rollsBack: false })
    const twice = Unit.step(once, { _tag: "Lost", cause: later })
    expect(Unit.abortCause(twice)).toBe(cause)
  })

  it("every implicit commit counts: the epoch only grows", () => {
    let p: Unit.Phase = Unit.initial
    for (let i = 1; i <= 3; i++) {
      p = Unit.step(Unit.step(p, { _tag: "Began" }), { _tag: "StatementDone", inTransaction: false })
      expect(p).toEqual({ _tag: "Idle", epoch: i })
    }
  })
})

describe("unit state machine: how a unit ends (decide)", () => {
  const end = (exit: Unit.Exit, more: Partial<Unit.Ending> = {}): Unit.Ending => ({
    exit,
    poisoned: false,
    rollbackOnly: false,
    connectionGone: false,
    ...more
  })
  const cases: ReadonlyArray<readonly [string, Unit.Phase, Unit.Ending, Unit.Decision]> = [
    [
      "success with a transaction open commits",
      states.open!,
      end("success"),
      { disposition: "commit", reason: undefined }
    ],
    ["success with nothing open releases", states.idle!, end("success"), { disposition: "release", reason: undefined }],
    [
      "success while the opening statement's answer is unknown commits (never a release over an open transaction)",
      states.opening!,
      end("success"),
      { disposition: "commit", reason: undefined }
    ],
    ["failure rolls back", states.open!, end("failure"), { disposition: "rollback", reason: "failure" }],
    ["a defect rolls back", states.open!, end("defect"), { disposition: "rollback", reason: "defect" }],
    ["interruption rolls back", states.open!, end("interrupt"), { disposition: "rollback", reason: "interrupt" }],
    [
      "an aborted unit rolls back even on success",
      states.abortedOpen!,
      end("success"),
      { disposition: "rollback", reason: "aborted" }
    ],
    [
      "aborted wins over the unit's own failure",
      states.abortedClosed!,
      end("failure"),
      { disposition: "rollback", reason: "aborted" }
    ],
    [
      "a statement interrupted after it ran poisons a successful unit",
      states.open!,
      end("success", { poisoned: true }),
      { disposition: "rollback", reason: "interrupted" }
    ],
    [
      "rollbackOnly rolls back a successful unit",
      states.open!,
      end("success", { rollbackOnly: true }),
      { disposition: "rollback", reason: "rollbackOnly" }
    ],
    [
      "a lost connection with a transaction open cannot commit",
      states.open!,
      end("success", { connectionGone: true }),
      { disposition: "lost", reason: undefined }
    ],
    [
      "a lost connection with nothing open releases",
      states.idle!,
      end("success", { connectionGone: true }),
      { disposition: "release", reason: undefined }
    ]
  ]
  for (const [name, phase, ending, decision] of cases) {
    it(name, () => expect(Unit.decide(phase, ending)).toEqual(decision))
  }

  it("ROLLBACK is sent only when a transaction is open on a working connection", () => {
    expect(Unit.rollbackNeeded(states.open!, false)).toBe(true)
    expect(Unit.rollbackNeeded(states.open!, true)).toBe(false)
    expect(Unit.rollbackNeeded(states.abortedOpen!, false)).toBe(true)
    expect(Unit.rollbackNeeded(states.abortedClosed!, false)).toBe(false)
    expect(Unit.rollbackNeeded(states.idle!, false)).toBe(false)
    expect(Unit.rollbackNeeded(states.opening!, false)).toBe(true)
  })

  it("COMMIT's outcome: done, refused, lost, interrupted before and after it was sent", () => {
    expect(Unit.commitResult({ _tag: "Done" })).toBe("committed")
    expect(Unit.commitResult({ _tag: "Failed", cause })).toBe("failed")
    expect(Unit.commitResult({ _tag: "Lost", cause })).toBe("unknown")
    expect(Unit.commitResult({ _tag: "Interrupted", sent: true })).toBe("unknown")
    expect(Unit.commitResult({ _tag: "Interrupted", sent: false })).toBe("notSent")
  })
})

describe("unit state machine: savepoints, one level down", () => {
  it("success releases, failure rolls back to the savepoint", () => {
    expect(Unit.decideSavepoint(states.open!, { undo: false, epochAtStart: 0 })).toBe("release")
    expect(Unit.decideSavepoint(states.open!, { undo: true, epochAtStart: 0 })).toBe("rollbackTo")
  })
  it("an aborted unit sends nothing for its savepoints", () => {
    expect(Unit.decideSavepoint(states.abortedOpen!, { undo: false, epochAtStart: 0 })).toBe("aborted")
    expect(Unit.decideSavepoint(states.abortedOpen!, { undo: true, epochAtStart: 0 })).toBe("aborted")
  })
  it("a savepoint an implicit commit ended: nothing to release; undoing it rolls back the whole open transaction", () => {
    const after: Unit.Phase = { _tag: "Open", epoch: 1 }
    expect(Unit.decideSavepoint(after, { undo: false, epochAtStart: 0 })).toBe("nothing")
    expect(Unit.decideSavepoint(after, { undo: true, epochAtStart: 0 })).toBe("rollbackAll")
    expect(Unit.decideSavepoint({ _tag: "Idle", epoch: 1 }, { undo: true, epochAtStart: 0 })).toBe("nothing")
  })
})
