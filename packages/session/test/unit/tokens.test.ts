/**
 * Causality tokens without a server: MariaDB GTID lists and PostgreSQL WAL positions (`system_identifier:LSN`) parse
 * into per-domain positions, merge per domain, and one covers another only where every domain is reached; the
 * PostgreSQL commit token's parts and which statements outside a unit may have written.
 */
import { describe, expect, it } from "@effect/vitest"
import { commitKind, mayHaveWritten, tokenOf } from "../../src/internal/driver/pg/commitToken.js"
import { covers, mergeTokens, positions, TOKEN_PATTERN } from "../../src/internal/tokens.js"

const SYS = "7715455669126898549"

describe("causality tokens", () => {
  it("PostgreSQL positions: the LSN as a 64-bit number, under the cluster's identifier", () => {
    expect(positions(`${SYS}:0/1501250`)).toEqual(new Map([[`pg:${SYS}`, 0x1501250n]]))
    expect(positions(`${SYS}:16/B374D848`)).toEqual(new Map([[`pg:${SYS}`, (0x16n << 32n) + 0xb374d848n]]))
    expect(positions("0-1-42")).toEqual(new Map([["0", 42n]]))
    expect(positions(`0-1-42,${SYS}:0/1`)?.size).toBe(2)
    expect(positions("0/1501250")).toBeUndefined()
    expect(positions("")).toEqual(new Map())
  })

  it("covers: the same cluster at or past the LSN; another cluster's never", () => {
    const at = positions(`${SYS}:1/10`)
    expect(covers(at, positions(`${SYS}:1/10`))).toBe(true)
    expect(covers(at, positions(`${SYS}:0/FFFFFFFF`))).toBe(true)
    expect(covers(at, positions(`${SYS}:1/11`))).toBe(false)
    expect(covers(at, positions("1234:0/1"))).toBe(false)
    expect(covers(at, positions("0-1-1"))).toBe(false)
  })

  it("mergeTokens: per cluster the later position, the text as the server wrote it; clusters and domains kept apart", () => {
    expect(mergeTokens(`${SYS}:1/10`, `${SYS}:0/FFFFFFFF`)).toBe(`${SYS}:1/10`)
    expect(mergeTokens(`${SYS}:0/FFFFFFFF`, `${SYS}:1/10`)).toBe(`${SYS}:1/10`)
    expect(mergeTokens(`${SYS}:1/10`, "1234:0/1")).toBe(`${SYS}:1/10,1234:0/1`)
    expect(mergeTokens(undefined, `${SYS}:1/10`)).toBe(`${SYS}:1/10`)
    expect(mergeTokens("0-1-5", "0-1-3")).toBe("0-1-5")
  })

  it("TOKEN_PATTERN: WAL positions and lists of them; nothing else that looks like one", () => {
    for (const good of [`${SYS}:0/1501250`, `${SYS}:16/B374D848`, "1:a/b", `${SYS}:0/1,1234:0/2`, "0-1-42"]) {
      expect(TOKEN_PATTERN.test(good), good).toBe(true)
    }
    for (const bad of ["0/1501250", `${SYS}:0/`, `${SYS}:/1`, `${SYS}:0/1,`, `${SYS}:G/1`, `${SYS}:0/1 `, "x:0/1"]) {
      expect(TOKEN_PATTERN.test(bad), bad).toBe(false)
    }
  })
})

describe("PostgreSQL commit tokens", () => {
  it("a synchronous commit's token is the flushed position, an asynchronous one's the insert position", () => {
    const row = { sys: SYS, flushed: "0/10", inserted: "0/18" }
    expect(tokenOf(row, true)).toBe(`${SYS}:0/10`)
    expect(tokenOf(row, false)).toBe(`${SYS}:0/18`)
    expect(tokenOf({ sys: SYS, flushed: null, inserted: null }, true)).toBeUndefined() // a standby
    expect(commitKind({ wrote: true, sync: false })).toEqual({ wrote: true, sync: false })
    expect(commitKind({ wrote: false, sync: true })).toEqual({ wrote: false, sync: true })
  })

  it("outside a unit, a statement may have written unless it is a read by its tag and its words", () => {
    expect(mayHaveWritten("UPDATE kv SET v = 1", "UPDATE")).toBe(true)
    expect(mayHaveWritten("INSERT INTO kv VALUES (1)", "INSERT")).toBe(true)
    expect(mayHaveWritten("CREATE TABLE t (id int)", "CREATE")).toBe(true)
    expect(mayHaveWritten("WITH x AS (DELETE FROM kv RETURNING id) SELECT * FROM x", "SELECT")).toBe(true)
    expect(mayHaveWritten("CREATE TABLE t2 AS SELECT 1", "SELECT")).toBe(true)
    expect(mayHaveWritten("SELECT nextval('s')", "SELECT")).toBe(true)
    expect(mayHaveWritten("SELECT v FROM kv WHERE id = $1", "SELECT")).toBe(false)
    expect(mayHaveWritten("SELECT pg_current_wal_insert_lsn()", "SELECT")).toBe(false)
    expect(mayHaveWritten("SHOW server_version", "SHOW")).toBe(false)
    expect(mayHaveWritten("DISCARD ALL", "DISCARD")).toBe(false)
    expect(mayHaveWritten("", null)).toBe(false)
  })
})
