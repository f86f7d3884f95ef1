// parseFio on what the real fio prints, and the perf history file. The fio 3.33 outputs with their exact
// numbers are in the full-corpus sweep (corpus.test.ts); quick runs through the command are in test/system.
import { spawnSync } from 'node:child_process'
import { existsSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { lastPerfResults, parseFio } from '../../lib/health/perf.ts'
import { makeRoots } from '../helpers.ts'

const haveFio = (process.env.PATH ?? '').split(':').some((d) => d && existsSync(path.join(d, 'fio')))

describe('parseFio', () => {
  it.skipIf(!haveFio)(`reads what this machine's fio prints: bytes per second, ms, s${haveFio ? '' : ' (skipped: fio is not installed)'}`, () => {
    const dir = makeRoots().base
    const started = process.hrtime.bigint()
    const fio = spawnSync('fio', ['--name=read', `--filename=${path.join(dir, 'fio.dat')}`, '--rw=read', '--bs=4k', '--size=8M', '--ioengine=psync', '--output-format=json'], { encoding: 'utf8' })
    const wallMs = Number(process.hrtime.bigint() - started) / 1e6
    expect(fio.status, fio.stderr).toBe(0)
    const doc = JSON.parse(fio.stdout)
    const job = parseFio(doc, 'read')
    // Every I/O is one 4 KiB block: megabytes per second and IOPS must agree on that.
    expect(job.mb_s * 1e6 / job.iops).toBeCloseTo(4096, 0)
    expect(job.runtime_seconds).toBeGreaterThan(0)
    expect(job.runtime_seconds * 1000).toBeLessThanOrEqual(wallMs)
    const clat = doc.jobs[0].read.clat_ns
    expect(job.p99_latency_ms).not.toBeNull()
    const p99Ns = job.p99_latency_ms! * 1e6
    expect(p99Ns).toBeGreaterThanOrEqual(clat.min)
    expect(p99Ns).toBeLessThanOrEqual(clat.max)
    expect(() => parseFio(doc, 'write')).toThrow('fio did no write I/O (jobs[0].write.runtime is 0)')
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
