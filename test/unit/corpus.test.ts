// The full-corpus sweep: every capture of the shared fixture corpus (../shared/fixtures), which sits beside the
// checkout on the machines that have it and is too large, and partly of no stated license, to keep in the
// project. Skipped, saying so, where it is absent; the curated captures in test/fixtures run everywhere.
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { parseFio } from '../../lib/health/perf.ts'
import { classifySmart, type SmartReport } from '../../lib/health/smart.ts'
import { PROJECT } from '../helpers.ts'

const CORPUS = path.join(PROJECT, '..', 'shared', 'fixtures')
const absent = (dir: string) => (existsSync(path.join(CORPUS, dir)) ? '' : ` (skipped: the shared fixture corpus (../shared/fixtures/${dir}) is not beside the checkout)`)

describe.skipIf(absent('smartctl') !== '')(`classifySmart over every smartctl capture of the shared corpus${absent('smartctl')}`, () => {
  const dir = path.join(CORPUS, 'smartctl')
  const all = () => new Map<string, SmartReport>(readdirSync(dir).filter((f) => f.endsWith('.json'))
    .map((f) => [f, classifySmart(JSON.parse(readFileSync(path.join(dir, f), 'utf8')), f)]))

  it('gives every file a verdict with reasons, and a sensible spread of verdicts', () => {
    const reports = all()
    expect(reports.size).toBeGreaterThan(150)
    const tally = { healthy: 0, warning: 0, failing: 0, unavailable: 0 }
    for (const [file, r] of reports) {
      expect(r.reasons.length, file).toBeGreaterThan(0)
      tally[r.verdict]++
    }
    for (const n of Object.values(tally)) expect(n).toBeGreaterThan(0)
    // Most drives in the wild are fine, and failing ones are the exception.
    expect(tally.healthy).toBeGreaterThan(reports.size / 2)
    expect(tally.failing).toBeLessThan(tally.warning)
  })

  it('finds the KVM guest virtio disk, open failures and every scan unavailable', () => {
    const reports = [...all()]
    const local = reports.filter(([f]) => f.startsWith('local__smartctl-7.3__'))
    expect(local).toHaveLength(7)
    for (const [file, r] of local) expect(r.verdict, file).toBe('unavailable')
    const only = (part: string) => {
      const hits = reports.filter(([f]) => f.includes(part))
      expect(hits.map(([f]) => f), part).toHaveLength(1)
      return hits[0]![1]
    }
    expect(only('-a_-dev-vda.json').reasons).toEqual(['/dev/vda: Unable to detect device type (smartctl exit status 1)'])
    expect(only('-a_-dev-sdz.json').reasons).toEqual(['Smartctl open device: /dev/sdz failed: No such device (smartctl exit status 2)'])
    const scans = reports.filter(([f]) => /scan/.test(f))
    expect(scans.length).toBeGreaterThanOrEqual(8)
    for (const [file, r] of scans) expect([file, r.verdict]).toEqual([file, 'unavailable'])
  })
})

describe.skipIf(absent('fio') !== '')(`parseFio over the fio 3.33 outputs of the shared corpus${absent('fio')}`, () => {
  const fixture = (name: string): unknown => JSON.parse(readFileSync(path.join(CORPUS, 'fio', name), 'utf8'))

  it.each([
    ['seq-libaio.json', { mb_s: 1623.854603, iops: 1548.628429, p99_latency_ms: 6.651904, runtime_seconds: 2.005 }],
    ['rand-uring.json', { mb_s: 356.364281, iops: 87002.998501, p99_latency_ms: 0.497664, runtime_seconds: 2.001 }],
    ['rand-psync.json', { mb_s: 81.103256, iops: 19800.5997, p99_latency_ms: 0.086528, runtime_seconds: 2.001 }],
  ])('%s', (name, expected) => {
    const job = parseFio(fixture(name), 'read')
    for (const [key, value] of Object.entries(expected)) expect(job[key as keyof typeof job], key).toBeCloseTo(value, 6)
    expect(() => parseFio(fixture(name), 'write')).toThrow('fio did no write I/O (jobs[0].write.runtime is 0)')
  })
})
