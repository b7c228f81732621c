/**
 * The COM_STMT_EXECUTE packet of a statement with exact integers (BIGINT parameters), without mysql2's generic
 * typed-parameter encoder for them. That encoder costs ~2.6 µs and several allocations per integer (a fresh encoder
 * closure, `BigInt` range arithmetic, an object spread): for the transfer workload, nine integers, about a tenth of
 * mysql2's own cost per transfer. Here an integer is written as its 8 bytes; every other value is encoded by
 * mysql2's own `toParameter`, and the packet is laid out as mysql2 lays it out. The bytes are the same: `install`
 * replaces mysql2's `Execute.toPacket` only after comparing both writers on probe packets, byte for byte (a property
 * test does so on thousands of random statements), and packets it does not cover (no integer, query attributes)
 * are still written by mysql2 itself.
 *
 * @internal
 */
import { createRequire } from "node:module"
import * as Path from "node:path"

/** MYSQL_TYPE_LONGLONG, COM_STMT_EXECUTE, CLIENT_QUERY_ATTRIBUTES. */
const LONGLONG = 0x08
const STMT_EXECUTE = 0x17
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

/** One encoded value, as mysql2's `toParameter` returns it. */
interface Encoded {
  readonly type: number
  readonly unsigned: boolean
  readonly isNull: boolean
  readonly length: number
  readonly value: unknown
  readonly byteLength?: number | undefined
  readonly writer: (this: RawPacket, value: unknown, byteLength: number | undefined) => void
}
type ToParameter = (value: unknown, encoding: string, timezone: string, jsonAsString: boolean, hint: unknown) => Encoded

/** What is used of mysql2's `Execute` packet (lib/packets/execute.js). */
interface ExecutePacket {
  readonly id: number
  readonly parameters: ReadonlyArray<unknown> | undefined
  readonly clientFlags: number
  readonly encoding: string
  readonly timezone: string
  readonly jsonAsString: boolean
  readonly parameterDefinitions: ReadonlyArray<unknown>
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

interface Internals {
  readonly Execute: ExecuteClass
  readonly Packet: PacketClass
  readonly toParameter: ToParameter
  /** mysql2's `TypedParameter` class: what its own encoder recognises with `instanceof`. */
  readonly TypedParameter: abstract new (...args: ReadonlyArray<never>) => object
}

/** mysql2's `TypedParameter` for a BIGINT (signed or unsigned) holding a bigint: what `bindValues` makes of integers. */
const isLongLong = (m: Internals, p: unknown): p is { readonly value: bigint; readonly unsigned: boolean } =>
  p instanceof m.TypedParameter &&
  (p as { type?: unknown }).type === LONGLONG &&
  typeof (p as { value?: unknown }).value === "bigint"

/** Whether this writer covers the statement: some value is an integer, and no query attributes travel with it. */
const fits = (m: Internals, e: ExecutePacket): boolean => {
  if (typeof e.clientFlags !== "number" || (e.clientFlags & CLIENT_QUERY_ATTRIBUTES) !== 0) return false
  const params = e.parameters
  if (params === undefined) return false
  for (let i = 0; i < params.length; i++) if (isLongLong(m, params[i])) return true
  return false
}

function writeSigned(this: RawPacket, v: unknown): void {
  this.buffer.writeBigInt64LE(v as bigint, this.offset)
  this.offset += 8
}
function writeUnsigned(this: RawPacket, v: unknown): void {
  this.buffer.writeBigUInt64LE(v as bigint, this.offset)
  this.offset += 8
}

/** An integer as mysql2 encodes a BIGINT (8 bytes, little-endian two's complement), without its range arithmetic. */
const longlong = (p: { readonly value: bigint; readonly unsigned: boolean }): Encoded => ({
  type: LONGLONG,
  unsigned: p.unsigned,
  isNull: false,
  length: 8,
  value: p.value,
  writer: p.unsigned ? writeUnsigned : writeSigned
})

/** The packet mysql2 writes for `e` (see `fits`): header, NULL bitmap, types, then each value. */
const write = (m: Internals, e: ExecutePacket): RawPacket => {
  const params = e.parameters!
  const n = params.length
  const encoded = new Array<Encoded>(n)
  // header, command, statement id, cursor flags, iteration count; NULL bitmap, new-params flag, two bytes per type
  let length = 14 + ((n + 7) >> 3) + 1 + n * 2
  for (let i = 0; i < n; i++) {
    const p = params[i]
    const v = isLongLong(m, p)
      ? longlong(p)
      : m.toParameter(p, e.encoding, e.timezone, e.jsonAsString, e.parameterDefinitions[i])
    encoded[i] = v
    if (!v.isNull) length += v.length
  }
  const packet = new m.Packet(0, Buffer.allocUnsafe(length), 0, length)
  packet.offset = 4
  packet.writeInt8(STMT_EXECUTE)
  packet.writeInt32(e.id)
  packet.writeInt8(0) // no cursor
  packet.writeInt32(1) // iteration count
  for (let byte = 0; byte < n; byte += 8) {
    let bitmap = 0
    for (let bit = 0; bit < 8 && byte + bit < n; bit++) if (encoded[byte + bit]!.isNull) bitmap |= 1 << bit
    packet.writeInt8(bitmap)
  }
  packet.writeInt8(1) // new parameters bound
  for (let i = 0; i < n; i++) {
    packet.writeInt8(encoded[i]!.type)
    packet.writeInt8(encoded[i]!.unsigned ? 0x80 : 0)
  }
  for (let i = 0; i < n; i++) {
    const v = encoded[i]!
    if (!v.isNull) v.writer.call(packet, v.value, v.byteLength)
  }
  if (packet.offset !== length) throw new Error(`COM_STMT_EXECUTE: wrote ${packet.offset} bytes of ${length}`)
  return packet
}

/** mysql2's own modules, loaded by file (its package exports only the entry points); `undefined` if absent. */
const mysql2Internals = (): Internals | undefined => {
  try {
    const require = createRequire(import.meta.url)
    const root = Path.join(Path.dirname(require.resolve("mysql2")), "lib/packets")
    const encode = require(Path.join(root, "encode_parameter.js")) as { readonly toParameter?: unknown }
    const typed = require(Path.join(root, "typed_parameter.js")) as { readonly TypedParameter?: unknown }
    if (typeof encode.toParameter !== "function" || typeof typed.TypedParameter !== "function") return undefined
    return {
      Execute: require(Path.join(root, "execute.js")) as ExecuteClass,
      Packet: require(Path.join(root, "packet.js")) as PacketClass,
      toParameter: encode.toParameter as ToParameter,
      TypedParameter: typed.TypedParameter as Internals["TypedParameter"]
    }
  } catch {
    return undefined
  }
}

/** The values of the probe packets: the edges of both integer types, with NULLs and the other kinds of value. */
const probes = (longlong: (v: bigint, unsigned: boolean) => unknown): ReadonlyArray<ReadonlyArray<unknown>> => {
  const s = (v: bigint) => longlong(v, false)
  const edges = [0n, 1n, -1n, 255n, -256n, 2n ** 31n, -(2n ** 31n) - 1n, 2n ** 53n - 1n, -(2n ** 53n) + 1n]
  return [
    [s(42n)],
    edges.map(s),
    [s(-(2n ** 63n)), s(2n ** 63n - 1n), longlong(2n ** 64n - 1n, true), longlong(2n ** 63n, true)],
    Array.from({ length: 17 }, (_, i) => (i % 3 === 0 ? null : s(BigInt(i) * -7919n))),
    [s(7n), "héllo ✓ 😀", "", 1.5, -0.25, true, false, null, Buffer.from([0, 255]), '{"a":1}', s(-7n)]
  ]
}

let installed: boolean | undefined

/**
 * Replaces mysql2's `Execute.toPacket` with one that writes packets with integers itself, once per process, if both
 * writers agree byte for byte on every probe (`longlong` builds mysql2's BIGINT parameter). Returns whether the fast
 * writer is in use.
 *
 * @internal
 */
export const install = (longlong: (v: bigint, unsigned: boolean) => unknown): boolean => {
  if (installed !== undefined) return installed
  installed = false
  const m = mysql2Internals()
  if (m === undefined) return false
  const original = m.Execute.prototype.toPacket
  if (typeof original !== "function") return false
  try {
    if (!agrees(m, original, probes(longlong))) return false
  } catch {
    // a writer that throws on a probe: mysql2's own stays
    return false
  }
  m.Execute.prototype[ORIGINAL] = original
  m.Execute.prototype.toPacket = function (this: ExecutePacket) {
    return fits(m, this) ? write(m, this) : original.call(this)
  }
  installed = true
  return true
}

/**
 * Whether both writers give the same bytes for every probe, under both JSON modes, two character sets, two time
 * zones and with the statement's parameter definitions (hints); and whether a packet with query attributes (MySQL
 * 8) is left to mysql2.
 */
const agrees = (m: Internals, original: () => RawPacket, all: ReadonlyArray<ReadonlyArray<unknown>>): boolean => {
  const hints = [
    { columnType: LONGLONG, flags: 0 },
    { columnType: 0xfd, flags: 0 }
  ]
  for (const params of all) {
    if (fits(m, new m.Execute(7, params, 45, "local", undefined, CLIENT_QUERY_ATTRIBUTES, true, []))) return false
    for (const [charset, timezone, jsonAsString, definitions] of [
      [45, "local", true, []],
      [33, "Z", false, hints],
      [8, "+02:00", true, hints]
    ] as const) {
      const e = new m.Execute(7, params, charset, timezone, undefined, 0x200, jsonAsString, definitions)
      if (!fits(m, e) || !samePacket(original.call(e), write(m, e))) return false
    }
  }
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

/**
 * For tests: both writers of one statement's packet (mysql2's and this one), or `undefined` when this one does not
 * cover it.
 *
 * @internal
 */
export const bothPackets = (
  params: ReadonlyArray<unknown>,
  o: { readonly clientFlags?: number; readonly jsonAsString?: boolean; readonly charsetNumber?: number } = {}
): { readonly mysql2: Buffer; readonly fast: Buffer } | undefined => {
  const m = mysql2Internals()
  if (m === undefined) return undefined
  const e = new m.Execute(
    7,
    params,
    o.charsetNumber ?? 45,
    "local",
    undefined,
    o.clientFlags ?? 0,
    o.jsonAsString ?? true,
    []
  )
  if (!fits(m, e)) return undefined
  const original = m.Execute.prototype[ORIGINAL] ?? m.Execute.prototype.toPacket
  return { mysql2: body(original.call(e)), fast: body(write(m, e)) }
}
