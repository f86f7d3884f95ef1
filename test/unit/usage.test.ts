// Disk and inode usage on the shared /tmp, with df as the reference for the used percentage; small tmpfs
// mounts filled for real are in test/system/usage.test.ts.
import { execFileSync } from 'node:child_process'
import { mkdirSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import type { Severity } from '../../lib/core/problems.ts'
import { loadSettings } from '../../lib/infra/config.ts'
import { filesystemUsage, levelOf } from '../../lib/health/usage.ts'
import { makeRoots } from '../helpers.ts'

/** df's percentage of `column` (pcent or ipcent), rounded up as df rounds it. */
const dfPercent = (dir: string, column = 'pcent') => Number(execFileSync('df', [`--output=${column}`, dir], { encoding: 'utf8' }).split('\n')[1]!.trim().replace('%', ''))

/** Rounded up as df rounds, after dropping float noise (0.07 * 100 is 7.000000000000001, not above 7). */
const roundedUp = (ratio: number) => Math.ceil(Number((ratio * 100).toFixed(6)))

describe('levelOf (warning 0.8, critical 0.9)', () => {
  it.each([
    [0, 'ok'], [0.799, 'ok'], [0.8, 'warning'], [0.85, 'warning'], [0.899, 'warning'], [0.9, 'critical'], [1, 'critical'],
  ] as const)('%s is %s', (ratio, level) => {
    expect(levelOf(ratio, 0.8, 0.9)).toBe(level)
  })

  it.each([
    ['critical', 0.87, 'critical'], ['critical', 0.85, 'critical'], ['critical', 0.84, 'warning'], ['critical', 0.76, 'warning'], ['critical', 0.74, 'ok'],
    ['warning', 0.92, 'critical'], ['warning', 0.76, 'warning'], ['warning', 0.75, 'warning'], ['warning', 0.74, 'ok'],
    ['ok', 0.76, 'ok'], ['ok', 0.87, 'warning'],
  ] as const)('held %s at %s is %s', (held, ratio, level) => {
    expect(levelOf(ratio, 0.8, 0.9, held as Severity)).toBe(level)
  })
})

describe('filesystems under the roots', () => {
  it('roots on one filesystem make one entry listing them all', async () => {
    const roots = makeRoots()
    mkdirSync(roots.app)
    const { filesystems, problems } = await filesystemUsage(loadSettings(roots.env))
    expect(filesystems).toHaveLength(1)
    expect(filesystems[0]!.roots).toEqual([{ name: 'models', path: roots.models }, { name: 'backup', path: roots.backup }, { name: 'app', path: roots.app }])
    expect(problems.filter((p) => p.key.endsWith(':missing'))).toEqual([])
  })

  it('used_ratio agrees with df on the shared /tmp filesystem, where root has blocks reserved', async () => {
    const roots = makeRoots()
    // Other tests write to /tmp meanwhile: df before and after bracket the sample.
    const before = dfPercent(roots.models)
    const { filesystems } = await filesystemUsage(loadSettings(roots.env))
    const after = dfPercent(roots.models)
    const ours = roundedUp(filesystems[0]!.used_ratio)
    expect(ours).toBeGreaterThanOrEqual(Math.min(before, after))
    expect(ours).toBeLessThanOrEqual(Math.max(before, after))
  })

  it('a missing models root is critical and names CITADEL_MODELS_ROOT', async () => {
    const roots = makeRoots()
    const gone = path.join(roots.base, 'gone')
    const { filesystems, problems } = await filesystemUsage(loadSettings({ ...roots.env, CITADEL_MODELS_ROOT: gone }))
    expect(problems).toContainEqual({ check: 'filesystems', severity: 'critical', key: `filesystems:${gone}:missing`, message: `models root ${gone} does not exist (CITADEL_MODELS_ROOT)` })
    expect(filesystems.flatMap((f) => f.roots.map((r) => r.name))).not.toContain('models')
  })
})
