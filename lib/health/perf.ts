// Measures a directory's I/O with fio: a sequential write and read in 1 MiB blocks, then 4 KiB random
// reads, on one hidden test file that backups skip and that is removed whatever happens. Each result is
// appended to a JSON lines history and compared with the previous one for the same path.
import { randomBytes } from 'node:crypto'
import { constants, promises as fs } from 'node:fs'
import path from 'node:path'
import type { Shell } from 'zx/core'
import { DIES_WITH_CITADEL } from '../infra/shell.ts'
import { processGroupGone } from '../infra/system.ts'
import { z } from 'zod'
import { readFileOrNull, which } from '../infra/fsx.ts'
import { checkShape } from '../infra/schemas.ts'
import { bytes } from '../infra/format.ts'

/** One fio job's figures; MB is 10^6 bytes, as disk vendors count. */
export interface PerfJob {
  mb_s: number
  iops: number
  p99_latency_ms: number | null
  runtime_seconds: number
}

export type PerfEngine = 'io_uring' | 'libaio' | 'psync'

export interface PerfResult {
  /** The measured directory, resolved (symlinks included), so one disk keeps one history. */
  path: string
  /** When the measurement finished (ISO). */
  at: string
  quick: boolean
  engine: PerfEngine
  direct: boolean
  /** Why the I/O was buffered or an engine was passed over. */
  notes: string[]
  size_bytes: number
  runtime_limit_seconds: number
  jobs: { seq_read: PerfJob; seq_write: PerfJob; rand_read_4k: PerfJob }
  /** The previous run on the same path; change is relative, -0.12 for 12% slower. */
  previous: { at: string; change: Record<'seq_read_mb_s' | 'seq_write_mb_s' | 'rand_read_4k_iops', number | null> } | null
}

const MIB = 1 << 20

/** Each job stops at whichever comes first: the size written or read, or the time limit. */
export const perfSize = (quick: boolean) =>
  quick ? { size_bytes: 64 * MIB, runtime_limit_seconds: 2 } : { size_bytes: 1024 * MIB, runtime_limit_seconds: 10 }

// The write comes first: it lays out the file the reads then read.
const JOBS = [
  { key: 'seq_write', name: 'seq-write', rw: 'write', bs: '1M', iodepth: 16, direction: 'write' },
  { key: 'seq_read', name: 'seq-read', rw: 'read', bs: '1M', iodepth: 16, direction: 'read' },
  { key: 'rand_read_4k', name: 'rand-read-4k', rw: 'randread', bs: '4k', iodepth: 32, direction: 'read' },
] as const

const ENGINES: readonly PerfEngine[] = ['io_uring', 'libaio', 'psync']

/** statfs magic numbers of the filesystems known to refuse O_DIRECT on some kernels. */
const FS_NAMES: Record<number, string> = { 0x01021994: 'tmpfs', 0x858458f6: 'ramfs', 0x794c7630: 'overlayfs', 0x65735546: 'FUSE' }

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null

/** One direction of the first job of fio's --output-format=json. */
export function parseFio(doc: unknown, direction: 'read' | 'write'): PerfJob {
  const job = isObject(doc) && Array.isArray(doc.jobs) ? doc.jobs[0] : undefined
  const side = isObject(job) ? job[direction] : undefined
  if (!isObject(side)) throw new Error(`fio output has no jobs[0].${direction}: expected fio --output-format=json`)
  const { bw_bytes, iops, runtime } = side
  if (typeof bw_bytes !== 'number' || typeof iops !== 'number' || typeof runtime !== 'number')
    throw new Error(`fio output's jobs[0].${direction} lacks the numbers bw_bytes, iops and runtime`)
  // A job that did nothing in this direction reads as 0 MB/s, which is no measurement at all.
  if (runtime === 0) throw new Error(`fio did no ${direction} I/O (jobs[0].${direction}.runtime is 0)`)
  const percentiles = isObject(side.clat_ns) ? side.clat_ns.percentile : undefined
  const p99 = isObject(percentiles) ? percentiles['99.000000'] : undefined
  return { mb_s: bw_bytes / 1e6, iops, p99_latency_ms: typeof p99 === 'number' ? p99 / 1e6 : null, runtime_seconds: runtime / 1000 }
}

const perfJob = z.object({ mb_s: z.number(), iops: z.number(), p99_latency_ms: z.number().nullable(), runtime_seconds: z.number() })
const change = z.number().nullable()
export const perfResultSchema = z.object({
  path: z.string(), at: z.string(), quick: z.boolean(), engine: z.enum(['io_uring', 'libaio', 'psync']), direct: z.boolean(),
  notes: z.array(z.string()), size_bytes: z.number(), runtime_limit_seconds: z.number(),
  jobs: z.object({ seq_read: perfJob, seq_write: perfJob, rand_read_4k: perfJob }),
  previous: z.object({ at: z.string(), change: z.object({ seq_read_mb_s: change, seq_write_mb_s: change, rand_read_4k_iops: change }) }).nullable(),
}) satisfies z.ZodType<PerfResult>

/**
 * Every result of a history. A line that is no JSON at all is what a run killed mid-append leaves (the
 * next append may even continue it) and is passed over; a JSON line of another shape is not citadel's.
 */
function parseHistory(file: string, text: string | null): PerfResult[] {
  const results: PerfResult[] = []
  for (const [i, line] of (text ?? '').split('\n').entries()) {
    if (!line.trim()) continue
    let doc: unknown
    try {
      doc = JSON.parse(line)
    } catch {
      continue
    }
    results.push(checkShape(perfResultSchema, `${file} line ${i + 1}`, doc, 'a perf result citadel wrote'))
  }
  return results
}

/** The newest result per path, by path; throws one line naming the file when a line is not citadel's. */
export async function lastPerfResults(historyFile: string): Promise<PerfResult[]> {
  const newest = new Map(parseHistory(historyFile, await readFileOrNull(historyFile)).map((r) => [r.path, r]))
  return [...newest.values()].sort((a, b) => a.path.localeCompare(b.path))
}

interface PerfRequest {
  $: Shell
  signal: AbortSignal
  progress: (text: string) => void
  dir: string
  quick: boolean
  historyFile: string
}

export async function runPerf(req: PerfRequest): Promise<PerfResult> {
  const { $, signal, quick } = req
  const dir = await fs.realpath(req.dir)
  const { size_bytes, runtime_limit_seconds } = perfSize(quick)
  if (!(await which('fio'))) throw new Error('fio is not installed: apt-get install fio')
  const { bavail, bsize, type } = await fs.statfs(dir)
  if (bavail * bsize < 2 * size_bytes)
    throw new Error(`not enough space in ${dir} for the I/O test: ${bytes(bavail * bsize)} free, ${bytes(2 * size_bytes)} needed (twice the ${bytes(size_bytes)} test file)`)
  signal.throwIfAborted()

  // Reserves a free name: fio later lays the file out afresh under it (unlink and create).
  const file = path.join(dir, `.perf.citadel-${process.pid}-${randomBytes(4).toString('hex')}`)
  await (await fs.open(file, 'wx', 0o600)).close()
  try {
    const notes: string[] = []
    req.progress('probing O_DIRECT and the fio engine')
    const direct = await supportsDirect(file)
    if (!direct) notes.push(`buffered I/O: ${FS_NAMES[type] ?? `the filesystem of ${dir}`} does not support O_DIRECT`)
    // fio reads ':' in a file name as a separator between files.
    const target = [`--filename=${file.replaceAll(':', '\\:')}`, `--direct=${direct ? 1 : 0}`]
    const engine = await pickEngine($, signal, target, notes)
    const measured = {} as PerfResult['jobs']
    for (const [i, job] of JOBS.entries()) {
      req.progress(`${job.name} ${i + 1}/${JOBS.length}: ${bytes(size_bytes)}, at most ${runtime_limit_seconds} s (${engine}, ${direct ? 'direct' : 'buffered'})`)
      const args = [...target, `--name=${job.name}`, `--ioengine=${engine}`, `--rw=${job.rw}`, `--bs=${job.bs}`, `--size=${size_bytes}`, `--runtime=${runtime_limit_seconds}`]
      // psync has no queue; a buffered write counts only once it has reached the disk.
      if (engine !== 'psync') args.push(`--iodepth=${job.iodepth}`)
      if (job.rw === 'write') args.push('--end_fsync=1')
      measured[job.key] = parseFio(await fio($, signal, args), job.direction)
    }
    const jobs = { seq_read: measured.seq_read, seq_write: measured.seq_write, rand_read_4k: measured.rand_read_4k }
    const history = await readFileOrNull(req.historyFile)
    // A --quick run and a full one measure different things (64 MiB may sit in a cache): compare like with like.
    const before = parseHistory(req.historyFile, history).findLast((r) => r.path === dir && r.quick === quick)
    const result: PerfResult = {
      path: dir, at: new Date().toISOString(), quick, engine, direct, notes, size_bytes, runtime_limit_seconds, jobs,
      previous: before ? { at: before.at, change: {
        seq_read_mb_s: relative(jobs.seq_read.mb_s, before.jobs.seq_read?.mb_s),
        seq_write_mb_s: relative(jobs.seq_write.mb_s, before.jobs.seq_write?.mb_s),
        rand_read_4k_iops: relative(jobs.rand_read_4k.iops, before.jobs.rand_read_4k?.iops),
      } } : null,
    }
    return result
  } finally {
    await fs.rm(file, { force: true })
  }
}

/** Adds a result to the history, which the next run compares with. */
export async function appendPerfHistory(historyFile: string, result: PerfResult): Promise<void> {
  const history = await readFileOrNull(historyFile)
  await fs.mkdir(path.dirname(historyFile), { recursive: true })
  // After a torn last line, this line starts on a line of its own.
  await fs.appendFile(historyFile, (history && !history.endsWith('\n') ? '\n' : '') + JSON.stringify(result) + '\n')
}

const relative = (now: number, before: number | undefined) => (before ? Math.round(((now - before) / before) * 1e4) / 1e4 : null)

/** EINVAL from an O_DIRECT open is the kernel's way of saying the filesystem has no direct I/O. */
async function supportsDirect(file: string): Promise<boolean> {
  try {
    await (await fs.open(file, constants.O_RDONLY | constants.O_DIRECT)).close()
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EINVAL') return false
    throw err
  }
}

/** The first engine a one-block write succeeds with; io_uring may be missing from fio or off in the kernel. */
async function pickEngine($: Shell, signal: AbortSignal, target: string[], notes: string[]): Promise<PerfEngine> {
  const passed: string[] = []
  for (const engine of ENGINES) {
    const error = await fio($, signal, [...target, '--name=probe', `--ioengine=${engine}`, '--rw=write', '--bs=4k', '--size=4k']).then(
      () => null,
      (err: unknown) => {
        if (signal.aborted) throw err
        return err instanceof FioFailed ? err.reason : (err as Error).message
      },
    )
    if (error === null) {
      if (passed.length) notes.push(`${passed.join('; ')}: used ${engine}`)
      return engine
    }
    passed.push(`${engine} unavailable (${error})`)
  }
  throw new Error(`fio can do no I/O in the test file with any engine: ${passed.join('; ')}`)
}

/**
 * Runs fio and resolves with its JSON document. fio runs in its own process group, so an abort stops it;
 * the test file is removed only once nothing of it is left to write into it. Its jobs run as threads of the
 * one process, which dies with citadel: job processes would go on writing until their time was up.
 */
async function fio($: Shell, signal: AbortSignal, args: string[]): Promise<unknown> {
  signal.throwIfAborted()
  const run = $({ signal, nothrow: true, detached: true })`${DIES_WITH_CITADEL} fio --thread ${args} --output-format=json`
  const out = await run
  if (signal.aborted) {
    if (run.child?.pid) await processGroupGone(run.child.pid)
    throw signal.reason
  }
  if (out.exitCode !== 0) throw new FioFailed(out.exitCode ?? out.signal ?? '?', fioReason(out.stdout + '\n' + out.stderr))
  try {
    return JSON.parse(out.stdout.slice(Math.max(0, out.stdout.search(/^\{/m))))
  } catch {
    throw new Error(`fio printed no JSON document: ${out.stdout.slice(0, 200) || '(nothing)'}`)
  }
}

class FioFailed extends Error {
  constructor(exit: number | string, readonly reason: string) {
    super(`fio exit ${exit}: ${reason}`)
  }
}

/**
 * Why fio failed, in a line. A failed job gets one summary on stdout, ahead of the JSON document, e.g.
 * "fio: pid=1, err=1/file:engines/io_uring.c:998, func=io_queue_init, error=Operation not permitted"
 * ("io_queue_init: Operation not permitted"); stderr may repeat an I/O error for every block.
 */
function fioReason(output: string): string {
  const lines = output.split('\n').filter((l) => l.startsWith('fio: '))
  const summaries = lines.flatMap((l) => /func=([^,]+), error=(.*)$/.exec(l)?.slice(1).join(': ') ?? [])
  return (summaries.length ? summaries : lines.slice(-2).map((l) => l.slice('fio: '.length))).join('; ') || 'no message'
}

