/**
 * The COM_STMT_EXECUTE packet of a statement whose values are all exact integers (BIGINT) or NULL, written without
 * mysql2's generic typed-parameter encoder. That encoder costs ~2.6 µs and several allocations per integer (a fresh
 * encoder closure, `BigInt` range arithmetic, an object spread): for the transfer workload, nine integers, about a
 * tenth of mysql2's own cost per transfer. The bytes are the same: `install` replaces mysql2's `Execute.toPacket`
 * only after comparing both writers on a set of probe packets, byte for byte, and every other packet (a string, a
 * double, a date, query attributes) is still written by mysql2 itself.
 *
 * @internal
 */
import { createRequire } from "node:module"
import * as Path from "node:path"

/** MYSQL_TYPE_LONGLONG, MYSQL_TYPE_NULL, COM_STMT_EXECUTE, the unsigned flag, CLIENT_QUERY_ATTRIBUTES. */
const LONGLONG = 0x08
const NULL = 0x06
const STMT_EXECUTE = 0x17
const UNSIGNED = 0x80
const CLIENT_QUERY_ATTRIBUTES = 0x08000000

/** Where `install` keeps mysql2's own writer. */
const ORIGINAL = Symbol.for("@sessionfx/session/executeToPacket")

/** What is used of mysql2's (untyped) `Packet`. */
interface RawPacket {
  offset: number
  readonly start: number
  readonly end: number
  readonly sequenceId: number
  readonly buffer: Buffer
  writeInt8(n: number): void
  writeInt32(n: number): void
}
type PacketClass = new (id: number, buffer: Buffer, start: number, end: number) => RawPacket
/** What is used of mysql2's `Execute` packet (lib/packets/execute.js). */
interface ExecutePacket {
  readonly id: number
  readonly parameters: ReadonlyArray<unknown> | undefined
  readonly clientFlags: number
  toPacket(): RawPacket
}
interface ExecuteClass {
  new (
    id: number,
    parameters: ReadonlyArray<unknown>,
    charsetNumber: number,
    timezone: string,
    attributes: undefined,
    clientFlags: number,
    jsonAsString: boolean,
    parameterDefinitions: ReadonlyArray<unknown>
  ): ExecutePacket
  readonly prototype: ExecutePacket & { [ORIGINAL]?: () => RawPacket }
}

/** A value the fast writer takes: mysql2's `TypedParameter` for a BIGINT (signed or unsigned) holding a bigint. */
const isLongLong = (p: unknown): p is { readonly value: bigint; readonly unsigned: boolean } =>
  typeof p === "object" &&
  p !== null &&
  (p as { type?: unknown }).type === LONGLONG &&
  typeof (p as { value?: unknown }).value === "bigint"

/** Whether every value of the statement is a BIGINT or NULL (and no query attributes travel with it). */
const fits = (e: ExecutePacket): boolean => {
  if ((e.clientFlags & CLIENT_QUERY_ATTRIBUTES) !== 0) return false
  const params = e.parameters
  if (params === undefined) return true
  for (let i = 0; i < params.length; i++) {
    const p = params[i]
    if (p !== null && !isLongLong(p)) return false
  }
  return true
}

/** The packet mysql2 would write for `e` (see `fits`): header, NULL bitmap, types, then 8 bytes per integer. */
const write = (Packet: PacketClass, e: ExecutePacket): RawPacket => {
  const params = e.parameters ?? []
  const n = params.length
  let length = 14
  if (n > 0) {
    length += ((n + 7) >> 3) + 1 + n * 2
    for (let i = 0; i < n; i++) if (params[i] !== null) length += 8
  }
  const packet = new Packet(0, Buffer.allocUnsafe(length), 0, length)
  packet.offset = 4
  packet.writeInt8(STMT_EXECUTE)
  packet.writeInt32(e.id)
  packet.writeInt8(0) // no cursor
  packet.writeInt32(1) // iteration count
  if (n === 0) return packet
  for (let byte = 0; byte < n; byte += 8) {
    let bitmap = 0
    for (let bit = 0; bit < 8 && byte + bit < n; bit++) if (params[byte + bit] === null) bitmap |= 1 << bit
    packet.writeInt8(bitmap)
  }
  packet.writeInt8(1) // new parameters bound
  for (let i = 0; i < n; i++) {
    const p = params[i] as { readonly unsigned: boolean } | null
    packet.writeInt8(p === null ? NULL : LONGLONG)
    packet.writeInt8(p !== null && p.unsigned ? UNSIGNED : 0)
  }
  const buffer = packet.buffer
  for (let i = 0; i < n; i++) {
    const p = params[i] as { readonly value: bigint; readonly unsigned: boolean } | null
    if (p === null) continue
    if (p.unsigned) buffer.writeBigUInt64LE(p.value, packet.offset)
    else buffer.writeBigInt64LE(p.value, packet.offset)
    packet.offset += 8
  }
  return packet
}

/** mysql2's own modules, loaded by file (its package exports only the entry points); `undefined` if absent. */
const mysql2Internals = (): { readonly Execute: ExecuteClass; readonly Packet: PacketClass } | undefined => {
  try {
    const require = createRequire(import.meta.url)
    const root = Path.dirname(require.resolve("mysql2"))
    return {
      Execute: require(Path.join(root, "lib/packets/execute.js")) as ExecuteClass,
      Packet: require(Path.join(root, "lib/packets/packet.js")) as PacketClass
    }
  } catch {
    return undefined
  }
}

/** The values of the probe packets: the edges of both integer types, NULLs across bitmap bytes. */
const probes = (longlong: (v: bigint, unsigned: boolean) => unknown): ReadonlyArray<ReadonlyArray<unknown>> => {
  const s = (v: bigint) => longlong(v, false)
  const edges = [0n, 1n, -1n, 255n, -256n, 2n ** 31n, -(2n ** 31n) - 1n, 2n ** 53n - 1n, -(2n ** 53n) + 1n]
  return [
    [],
    [s(42n)],
    [null],
    edges.map(s),
    [s(-(2n ** 63n)), s(2n ** 63n - 1n), longlong(2n ** 64n - 1n, true), longlong(2n ** 63n, true)],
    Array.from({ length: 17 }, (_, i) => (i % 3 === 0 ? null : s(BigInt(i) * -7919n)))
  ]
}

let installed: boolean | undefined

/**
 * Replaces mysql2's `Execute.toPacket` with one that writes all-integer packets itself, once per process, if both
 * writers agree byte for byte on every probe (`longlong` builds mysql2's BIGINT parameter). Returns whether the fast
 * writer is in use.
 *
 * @internal
 */
export const install = (longlong: (v: bigint, unsigned: boolean) => unknown): boolean => {
  if (installed !== undefined) return installed
  installed = false
  const internals = mysql2Internals()
  if (internals === undefined) return false
  const { Execute, Packet } = internals
  const original = Execute.prototype.toPacket
  if (typeof original !== "function") return false
  for (const params of probes(longlong)) {
    for (const clientFlags of [0, 0x200]) {
      const e = new Execute(7, params, 45, "local", undefined, clientFlags, true, [])
      if (!fits(e) || !samePacket(original.call(e), write(Packet, e))) return false
    }
  }
  Execute.prototype[ORIGINAL] = original
  Execute.prototype.toPacket = function (this: ExecutePacket) {
    return fits(this) ? write(Packet, this) : original.call(this)
  }
  installed = true
  return true
}

const samePacket = (a: RawPacket, b: RawPacket): boolean =>
  a.offset === b.offset &&
  a.start === b.start &&
  a.end === b.end &&
  a.sequenceId === b.sequenceId &&
  Buffer.compare(body(a), body(b)) === 0

/** A packet's bytes after its 4-byte header (length and sequence id: written later, by mysql2's `writePacket`). */
const body = (p: RawPacket): Buffer => p.buffer.subarray(p.start + 4, p.end)

/** For tests: both writers of one statement's packet (mysql2's and the fast one), or `undefined` if it does not fit. */
export const bothPackets = (
  params: ReadonlyArray<unknown>,
  clientFlags = 0
): { readonly mysql2: Buffer; readonly fast: Buffer } | undefined => {
  const internals = mysql2Internals()
  if (internals === undefined) return undefined
  const { Execute, Packet } = internals
  const e = new Execute(7, params, 45, "local", undefined, clientFlags, true, [])
  if (!fits(e)) return undefined
  const original = Execute.prototype[ORIGINAL] ?? Execute.prototype.toPacket
  const a = original.call(e)
  const b = write(Packet, e)
  return { mysql2: body(a), fast: body(b) }
}
