// citadel perf, for real: quick runs of fio on a tmpfs through the CLI, the history they keep, interrupts,
// and the space a run refuses to fill.
import { execFileSync } from 'node:child_process'
import { closeSync, constants, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statfsSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, describe, expect, it } from 'vitest'
import { lastPerfResults } from '../../lib/health/perf.ts'
import { citadelJson, makeRoots, start } from '../helpers.ts'

/** A history line as citadel writes it. */
const record = (p: string, at: string, quick = false) => {
  const job = { mb_s: 1, iops: 1, p99_latency_ms: 1, runtime_seconds: 10 }
  return { path: p, at, quick, engine: 'psync', direct: false, notes: [], size_bytes: 1, runtime_limit_seconds: 1, jobs: { seq_read: job, seq_write: job, rand_read_4k: job }, previous: null }
}


const asRoot = process.getuid?.() === 0
const TMPFS_MAGIC = 0x01021994
const shmIsTmpfs = existsSync('/dev/shm') && statfsSync('/dev/shm').type === TMPFS_MAGIC
const haveFio = (process.env.PATH ?? '').split(':').some((d) => d && existsSync(path.join(d, 'fio')))
const skipReason = !haveFio ? 'fio is not installed' : !asRoot && !shmIsTmpfs ? 'not root and /dev/shm is no tmpfs' : ''

const cleanups: (() => void)[] = []
afterEach(() => {
  for (const clean of cleanups.splice(0).reverse()) clean()
})

/** An empty directory on a tmpfs: a fresh mount as root, else one under /dev/shm. */
function tmpfsDir(size: string): string {
  if (!asRoot) {
    const dir = mkdtempSync('/dev/shm/citadel-perf-')
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }))
    return dir
  }
  const dir = mkdtempSync(path.join(os.tmpdir(), 'citadel-perf-'))
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir])
  cleanups.push(() => {
    execFileSync('umount', [dir])
    rmSync(dir, { recursive: true })
  })
  return dir
}

/** What an O_DIRECT open says on `dir`'s filesystem, asked independently of citadel. */
function acceptsODirect(dir: string): boolean {
  const probe = path.join(dir, '.o-direct-probe')
  try {
    closeSync(openSync(probe, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_DIRECT))
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EINVAL') return false
    throw err
  } finally {
    rmSync(probe, { force: true })
  }
}

/** The fio processes whose command line names a test file in `dir`, with their job names. */
function fioOn(dir: string): { pid: string; job: string }[] {
  return readdirSync('/proc').filter((pid) => /^\d+$/.test(pid)).flatMap((pid) => {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
      if (path.basename(argv[0] ?? '') !== 'fio' || !argv.some((a) => a.startsWith(`--filename=${dir}/.perf.citadel-`))) return []
      return [{ pid, job: argv.find((a) => a.startsWith('--name='))?.slice('--name='.length) ?? '?' }]
    } catch {
      return [] // gone while we read it
    }
  })
}

const MESSAGE = /^seq read [\d.]+ MB\/s, seq write [\d.]+ MB\/s, 4k random read [\d.]+[kM]? IOPS \(p99 [\d.]+ ms\)$/

describe.skipIf(skipReason !== '')(`citadel perf on a tmpfs${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  it('--quick measures, records history, compares with the previous run and leaves no test file', async () => {
    const dir = tmpfsDir('200m')
    const roots = makeRoots()
    const history = path.join(roots.app, 'state', 'perf-history.jsonl')
    const measure = async () => {
      const result = await citadelJson(['perf', dir, '--quick'], roots.env)
      expect(result.code, result.stderr + JSON.stringify(result.doc.tasks)).toBe(0)
      expect(readdirSync(dir)).toEqual([])
      return result.doc.tasks[0]
    }

    const first = await measure()
    expect(first.status).toBe('ok')
    expect(first.msg).toMatch(MESSAGE)
    const r = first.data
    expect(r).toMatchObject({ path: dir, quick: true, size_bytes: 64 << 20, runtime_limit_seconds: 2, previous: null })
    expect(['io_uring', 'libaio', 'psync']).toContain(r.engine)
    for (const job of ['seq_read', 'seq_write', 'rand_read_4k']) {
      expect(r.jobs[job].mb_s, job).toBeGreaterThan(0)
      expect(r.jobs[job].iops, job).toBeGreaterThan(0)
      expect(r.jobs[job].runtime_seconds, job).toBeLessThanOrEqual(2.5)
    }
    // Kernels since 6.6 give tmpfs O_DIRECT; older ones refuse it, and the run says so.
    expect(r.direct).toBe(acceptsODirect(dir))
    expect(r.notes.includes('buffered I/O: tmpfs does not support O_DIRECT')).toBe(!r.direct)
    expect(first.warnings).toEqual(r.direct ? [] : r.notes)

    const second = (await measure()).data
    expect(second.previous.at).toBe(r.at)
    expect(second.previous.change.seq_read_mb_s).toBeCloseTo(second.jobs.seq_read.mb_s / r.jobs.seq_read.mb_s - 1, 3)
    expect(second.previous.change.rand_read_4k_iops).toBeCloseTo(second.jobs.rand_read_4k.iops / r.jobs.rand_read_4k.iops - 1, 3)
    const lines = readFileSync(history, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l))
    expect(lines).toEqual([r, second])
    expect(await lastPerfResults(history)).toEqual([second])
  })

  it.each(['SIGINT', 'SIGTERM'] as const)('%s while fio measures stops fio, removes the test file and exits 99', async (signal) => {
    const dir = tmpfsDir('200m')
    const roots = makeRoots()
    const { child, done } = start(['perf', dir, '--quick', '--json'], roots.env)
    for (const until = Date.now() + 20_000; !(readdirSync(dir).length && fioOn(dir).some((p) => p.job !== 'probe')); await sleep(2))
      if (Date.now() > until) throw new Error('fio never started measuring on a test file')
    child.kill(signal)
    const result = await done
    expect(result.code, result.stdout + result.stderr).toBe(99)
    expect(JSON.parse(result.stdout).tasks[0].msg).toBe('interrupted by signal')
    expect(fioOn(dir), 'no fio left running').toEqual([])
    expect(readdirSync(dir)).toEqual([])
    expect(existsSync(path.join(roots.app, 'state', 'perf-history.jsonl'))).toBe(false)
  })

  it.runIf(asRoot)('refuses a disk with less than twice the test size free (root: an 8 MiB tmpfs)', async () => {
    const dir = tmpfsDir('8m')
    const result = await citadelJson(['perf', dir, '--quick'], makeRoots().env)
    expect(result.code).toBe(2)
    expect(result.doc.tasks[0].msg).toBe(`not enough space in ${dir} for the I/O test: 8.00 MiB free, 128 MiB needed (twice the 64.0 MiB test file)`)
    expect(readdirSync(dir)).toEqual([])
  })
})

describe('citadel perf against its history', () => {
  it('compares a quick run only with an earlier quick run of the same path, never with a full one', async () => {
    const dir = tmpfsDir('200m')
    const roots = makeRoots()
    const history = path.join(roots.app, 'state', 'perf-history.jsonl')
    mkdirSync(path.dirname(history), { recursive: true })
    writeFileSync(history, JSON.stringify(record(dir, '2026-11-01T00:00:00.000Z')) + '\n')
    const result = await citadelJson(['perf', dir, '--quick'], roots.env)
    expect(result.code, result.stderr).toBe(0)
    expect(result.doc.tasks[0].data.previous).toBeNull()
  })
})
