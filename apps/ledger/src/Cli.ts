/**
 * The ledger's command line, read strictly: an unknown option, a missing or malformed value, a demo option given to
 * `serve` or an extra argument is a configuration error (one line, exit code 1), never silently ignored.
 */
import { parseArgs } from "node:util"

export interface DemoOptions {
  readonly connections: number
  readonly transfers: number
  readonly accounts: number
  readonly seed: number
  /** A server to run against instead of one started in-process. */
  readonly host: string | undefined
  readonly port: number | undefined
  readonly token: string | undefined
}

export type Cli =
  | { readonly _tag: "Help" }
  | { readonly _tag: "Version" }
  | { readonly _tag: "Serve"; readonly fastUnsafe: boolean }
  | { readonly _tag: "Demo"; readonly fastUnsafe: boolean; readonly demo: DemoOptions }

const demoOnly = ["connections", "transfers", "accounts", "seed", "host", "port", "token"] as const

const integer = (name: string, raw: string | undefined, fallback: number, max: number): number => {
  if (raw === undefined) return fallback
  const value = /^[0-9]{1,10}$/.test(raw) ? Number(raw) : NaN
  if (!(value >= 1 && value <= max)) throw new Error(`--${name}: expected an integer from 1 to ${max}, not "${raw}"`)
  return value
}

/** The command and its options from `argv` (without node and the script), or a one-line error. */
export const parse = (argv: ReadonlyArray<string>): Cli | { readonly _tag: "Invalid"; readonly message: string } => {
  try {
    const { values, positionals } = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: true,
      options: {
        help: { type: "boolean", short: "h" },
        version: { type: "boolean" },
        "fast-unsafe": { type: "boolean" },
        ...Object.fromEntries(demoOnly.map((name) => [name, { type: "string" as const }]))
      }
    })
    if (values.help === true) return { _tag: "Help" }
    if (values.version === true) return { _tag: "Version" }
    const [command = "serve", ...extra] = positionals
    if (command !== "serve" && command !== "demo") {
      return { _tag: "Invalid", message: `unknown command "${command}"; use "serve" or "demo" (see --help)` }
    }
    if (extra.length > 0) return { _tag: "Invalid", message: `unexpected argument "${extra[0]}" (see --help)` }
    const fastUnsafe = values["fast-unsafe"] === true
    const text = values as Record<string, string | undefined>
    if (command === "serve") {
      const given = demoOnly.find((name) => text[name] !== undefined)
      if (given !== undefined) return { _tag: "Invalid", message: `--${given} is an option of "demo", not "serve"` }
      return { _tag: "Serve", fastUnsafe }
    }
    const demo: DemoOptions = {
      connections: integer("connections", text.connections, 16, 10_000),
      transfers: integer("transfers", text.transfers, 4000, 1_000_000_000),
      accounts: integer("accounts", text.accounts, 32, 1_000_000),
      seed: integer("seed", text.seed, 42, 2 ** 31 - 1),
      host: text.host,
      port: text.port === undefined ? undefined : integer("port", text.port, 0, 65_535),
      token: text.token
    }
    return { _tag: "Demo", fastUnsafe, demo }
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error)
    return { _tag: "Invalid", message: message.split("\n")[0]!.replace(/^Option '/, "option '") }
  }
}
