/**
 * The process the scale and soak runs are measured in (`build/stress.mjs`, started by `main`): it loads sessionfx,
 * Effect and mysql2 and nothing else, so its RSS is what an application running sessionfx pays, not the benchmark's
 * other implementations or the server harness. Takes one JSON argument (`StressJob`) and the server in `MYSQL_URL`;
 * draws its progress on stderr and writes its result as JSON on stdout.
 */
import { withProgress } from "./progress.js"
import { runScale, runSoak, type StressJob } from "./stress.js"

const main = async () => {
  const url = process.env.MYSQL_URL
  if (url === undefined || url === "") throw new Error("stress: MYSQL_URL is not set (run it through `pnpm bench`)")
  const arg = process.argv[2]
  if (arg === undefined) throw new Error("stress: missing the job argument (run it through `pnpm bench`)")
  const job = JSON.parse(arg) as StressJob
  const result =
    job.mode === "scale"
      ? await withProgress(`scale: ${job.units} units (${job.spawn}), pool 16`, job.units, (p) =>
          runScale(url, job.accounts, job.units, job.seed, job.spawn, p)
        )
      : await withProgress(`soak: ${job.sessions} sequential sessions`, job.sessions, (p) =>
          runSoak(url, job.accounts, job.sessions, job.seed, p)
        )
  process.stdout.write(JSON.stringify(result))
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`)
  process.exitCode = 1
})
