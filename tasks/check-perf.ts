// Measures the I/O of the model disk (or PATH) with fio and compares it with the previous run on the same
// path. A measurement, not a change: it reports ok and its history line is bookkeeping. It still takes the
// run lock, as it writes a test file, so it never measures while a backup runs.
import { promises as fs } from 'node:fs'
import { perfHistoryFile } from '../lib/infra/layout.ts'
import { refusal } from '../lib/core/marks.ts'
import { appendPerfHistory, perfSize, runPerf, type PerfJob, type PerfResult } from '../lib/health/perf.ts'
import { z } from 'zod'
import { localPath } from '../lib/core/args.ts'
import { defineTask, runWhenMain } from '../lib/core/task.ts'
import { bytes, table } from '../lib/infra/format.ts'

const mbs = (n: number) => `${n >= 100 ? Math.round(n) : n.toFixed(1)} MB/s`
const iops = (n: number) => (n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : `${Math.round(n)}`)
const ms = (n: number | null) => (n === null ? '-' : `${n.toFixed(n < 10 ? 2 : 0)} ms`)

/** −12%, +3%, ±0%: a relative change as the table shows it. */
function percent(change: number | null | undefined): string {
  if (change === null || change === undefined) return ''
  const p = Math.round(change * 100)
  return p === 0 ? '±0%' : p < 0 ? `−${-p}%` : `+${p}%`
}

function details(r: PerfResult): string[] {
  const change = r.previous?.change
  const row = (label: string, j: PerfJob, vs: string) => [label, mbs(j.mb_s), iops(j.iops), ms(j.p99_latency_ms), vs]
  const mode = `${r.engine}, ${r.direct ? 'direct' : 'buffered'} I/O, at most ${bytes(r.size_bytes)} and ${r.runtime_limit_seconds} s per job`
  return [
    ...table([
      ['JOB', 'THROUGHPUT', 'IOPS', 'P99', 'VS PREVIOUS'],
      row('seq read', r.jobs.seq_read, percent(change?.seq_read_mb_s)),
      row('seq write', r.jobs.seq_write, percent(change?.seq_write_mb_s)),
      row('4k random read', r.jobs.rand_read_4k, percent(change?.rand_read_4k_iops)),
    ]),
    `${mode}; ${r.previous ? `previous run ${r.previous.at}` : `first run on ${r.path}`}`,
  ]
}

const task = defineTask({
  name: 'check-perf',
  description: 'Measure I/O with fio in the models root (or PATH): sequential read and write, 4 KiB random read, against the previous run',
  tags: ['monitor', 'perf'],
  args: z.object({
    path: localPath.optional().meta({ positional: true, value: 'PATH', description: 'directory to measure (default: the models root)' }),
    quick: z.boolean().default(false).meta({ description: '64 MiB and 2 s per job instead of 1 GiB and 10 s' }),
  }),
  async run(ctx) {
    // The models root only when it is the disk citadel marked: an empty mount point would be measured as it.
    const refused = ctx.args.path !== undefined ? null : await refusal(ctx.$, ctx.settings, ['models'], ctx.check ? ctx.earlierChanges : [])
    if (refused) return ctx.fail(refused)
    const dir = ctx.args.path ?? ctx.settings.modelsRoot
    const st = await fs.stat(dir).catch(() => null)
    if (!st) return ctx.fail(`${dir} does not exist: nothing to measure`)
    if (!st.isDirectory()) return ctx.fail(`${dir} is not a directory: give the directory to measure`)
    const { quick } = ctx.args
    const { size_bytes, runtime_limit_seconds } = perfSize(quick)
    if (ctx.check) return ctx.skip(`would run fio in ${dir} (3 jobs of at most ${bytes(size_bytes)} and ${runtime_limit_seconds} s each; needs ${bytes(2 * size_bytes)} free)`)
    let r: PerfResult
    try {
      r = await runPerf({ $: ctx.$, signal: ctx.signal, progress: ctx.progress, dir, quick, historyFile: perfHistoryFile(ctx.settings) })
      await ctx.bookkeep('perf history', () => appendPerfHistory(perfHistoryFile(ctx.settings), r))
    } catch (err) {
      if (ctx.signal.aborted) throw err
      return ctx.fail((err as Error).message)
    }
    ctx.detail(...details(r))
    // Buffered figures partly measure the page cache: worth a warning. Otherwise a note is context.
    if (r.direct) ctx.detail(...r.notes.map((n) => `note: ${n}`))
    else for (const n of r.notes) ctx.warn(n)
    const { seq_read, seq_write, rand_read_4k } = r.jobs
    return ctx.finish(`seq read ${mbs(seq_read.mb_s)}, seq write ${mbs(seq_write.mb_s)}, 4k random read ${iops(rand_read_4k.iops)} IOPS (p99 ${ms(rand_read_4k.p99_latency_ms)})`, { ...r })
  },
})

export default task
runWhenMain(import.meta)
