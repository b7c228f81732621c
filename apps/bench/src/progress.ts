/**
 * Progress of a long job: a counter the job bumps, and a one-line bar on stderr redrawn while it runs.
 */
export interface Progress {
  done: number
}

/** Runs `f` with a progress counter and draws it as a bar on stderr (every 200 ms on a terminal, else every 10 s). */
export const withProgress = async <A>(
  label: string,
  total: number,
  f: (progress: Progress) => Promise<A>
): Promise<A> => {
  const progress: Progress = { done: 0 }
  const tty = process.stderr.isTTY === true
  const draw = (final: boolean) => {
    const fraction = total === 0 ? 1 : Math.min(1, progress.done / total)
    const width = 30
    const filled = Math.round(fraction * width)
    const bar = `[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${(fraction * 100).toFixed(0).padStart(3)}% ${label} ${progress.done}/${total}`
    // on a terminal the bar is redrawn in place; in a log (CI) it is a line every 10 s and one at the end
    if (tty) process.stderr.write(`\r\x1b[2K${bar}${final ? "\n" : ""}`)
    else process.stderr.write(bar + "\n")
  }
  const timer = setInterval(() => draw(false), tty ? 200 : 10_000)
  timer.unref()
  try {
    return await f(progress)
  } finally {
    clearInterval(timer)
    draw(true)
  }
}
