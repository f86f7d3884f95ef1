// citadel perf, for real: fio's JSON as fio 3.33 wrote it, quick runs on a tmpfs through the CLI, the
// history they keep, interrupts, and the space a run refuses to fill.
import { execFileSync } from 'node:child_process'
import { closeSync, constants, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statfsSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, describe, expect, it } from 'vitest'
import { lastPerfResults, parseFio } from '../../lib/health/perf.ts'
import { citadelJson, makeRoots, PROJECT, start } from '../helpers.ts'

const FIXTURES = path.join(PROJECT, '..', 'shared', 'fixtures', 'fio')
const haveFixtures = existsSync(FIXTURES)
const fixture = (name: string): unknown => JSON.parse(readFileSync(path.join(FIXTURES, name), 'utf8'))

describe.skipIf(!haveFixtures)(`parseFio over real fio outputs${haveFixtures ? '' : ` (skipped: ${FIXTURES} is missing)`}`, () => {
  it.each([
    ['seq-libaio.json', { mb_s: 1623.854603, iops: 1548.628429, p99_latency_ms: 6.651904, runtime_seconds: 2.005 }],
    ['rand-uring.json', { mb_s: 356.364281, iops: 87002.998501, p99_latency_ms: 0.497664, runtime_seconds: 2.001 }],
    ['rand-psync.json', { mb_s: 81.103256, iops: 19800.5997, p99_latency_ms: 0.086528, runtime_seconds: 2.001 }],
  ])('%s', (name, expected) => {
    const job = parseFio(fixture(name), 'read')
    for (const [key, value] of Object.entries(expected)) expect(job[key as keyof typeof job], key).toBeCloseTo(value, 6)
    expect(() => parseFio(fixture(name), 'write')).toThrow('fio did no write I/O (jobs[0].write.runtime is 0)')
  })

  it('throws on a shape it cannot read', () => {
    expect(() => parseFio({ error: 'nope' }, 'read')).toThrow('fio output has no jobs[0].read: expected fio --output-format=json')
    expect(() => parseFio({ jobs: [{ read: { bw_bytes: '1', iops: 1, runtime: 1 } }] }, 'read')).toThrow('lacks the numbers bw_bytes, iops and runtime')
  })
})

/** A history line as citadel writes it. */
const record = (p: string, at: string, quick = false) => {
  const job = { mb_s: 1, iops: 1, p99_latency_ms: 1, runtime_seconds: 10 }
  return { path: p, at, quick, engine: 'psync', direct: false, notes: [], size_bytes: 1, runtime_limit_seconds: 1, jobs: { seq_read: job, seq_write: job, rand_read_4k: job }, previous: null }
}

describe('lastPerfResults', () => {
  it('keeps the newest result per path and tolerates a torn last line', async () => {
    const file = path.join(makeRoots().base, 'perf-history.jsonl')
    expect(await lastPerfResults(file)).toEqual([])
    const line = (p: string, at: string) => JSON.stringify(record(p, at))
    writeFileSync(file, [line('/b', '1'), line('/a', '2'), line('/b', '3'), '{"path": "/a", "at": "4", "jo'].join('\n'))
    expect((await lastPerfResults(file)).map((r) => [r.path, r.at])).toEqual([['/a', '2'], ['/b', '3']])
  })

  it('names the file and line of a result of another shape', async () => {
    const file = path.join(makeRoots().base, 'perf-history.jsonl')
    writeFileSync(file, [JSON.stringify(record('/a', '1')), JSON.stringify({ path: '/a', at: '2', jobs: {} })].join('\n'))
    await expect(lastPerfResults(file)).rejects.toThrow(`${file} line 2 is not a perf result citadel wrote at quick: Invalid input: expected boolean, received undefined`)
  })
})

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

describe('citadel perf without measuring', () => {
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

  it('fails with one clear line on a missing path or a file', async () => {
    const roots = makeRoots()
    const missing = path.join(roots.base, 'nope')
    const gone = await citadelJson(['perf', missing, '--quick'], roots.env)
    expect(gone.code).toBe(2)
    expect(gone.doc.tasks[0].msg).toBe(`${missing} does not exist: nothing to measure`)
    const file = path.join(roots.base, 'test.env')
    const notDir = await citadelJson(['perf', file], roots.env)
    expect(notDir.code).toBe(2)
    expect(notDir.doc.tasks[0].msg).toBe(`${file} is not a directory: give the directory to measure`)
  })

  it('in check mode says what it would run and writes nothing', async () => {
    const roots = makeRoots()
    const dir = path.join(roots.base, 'disk')
    mkdirSync(dir)
    const result = await citadelJson(['perf', dir, '--quick', '--check'], roots.env)
    expect(result.code).toBe(0)
    expect(result.doc.tasks[0]).toMatchObject({ status: 'skipped', msg: `would run fio in ${dir} (3 jobs of at most 64.0 MiB and 2 s each; needs 128 MiB free)` })
    expect(readdirSync(dir)).toEqual([])
    expect(existsSync(roots.app)).toBe(false)
  })
})
