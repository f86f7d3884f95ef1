// Disk and inode usage against small tmpfs mounts filled for real (root only), df the reference for the used
// percentage.
import { execFileSync } from 'node:child_process'
import { mkdirSync, statfsSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import type { Severity } from '../../lib/core/problems.ts'
import { loadSettings } from '../../lib/infra/config.ts'
import { filesystemUsage } from '../../lib/health/usage.ts'
import { citadelJson, makeRoots, setUp } from '../helpers.ts'

/** df's percentage of `column` (pcent or ipcent), rounded up as df rounds it. */
const dfPercent = (dir: string, column = 'pcent') => Number(execFileSync('df', [`--output=${column}`, dir], { encoding: 'utf8' }).split('\n')[1]!.trim().replace('%', ''))

/** Rounded up as df rounds, after dropping float noise (0.07 * 100 is 7.000000000000001, not above 7). */
const roundedUp = (ratio: number) => Math.ceil(Number((ratio * 100).toFixed(6)))

const asRoot = process.getuid?.() === 0

/** Mounts at `dir` for the length of `fn` (mount ...args dir), and always unmounts it. */
async function withMount(dir: string, args: string[], fn: () => Promise<void>) {
  execFileSync('mount', [...args, dir])
  try {
    await fn()
  } finally {
    execFileSync('umount', [dir])
  }
}

/** Writes whole pages (tmpfs allocates by the page) until `ratio` of the blocks are in use. */
function fillTo(dir: string, ratio: number) {
  const s = statfsSync(dir)
  const blocks = Math.ceil(ratio * s.blocks) - (s.blocks - s.bfree)
  writeFileSync(path.join(dir, `filler-${ratio}`), Buffer.alloc(blocks * s.bsize, 1))
}

async function modelsDisk(env: Record<string, string>, held?: ReadonlyMap<string, Severity>) {
  const settings = loadSettings(env)
  const { filesystems, problems } = await filesystemUsage(settings, held)
  const fs = filesystems.find((f) => f.mount === settings.modelsRoot)!
  return { fs, problems: problems.filter((p) => p.key.startsWith(`filesystems:${settings.modelsRoot}:`)) }
}

describe.skipIf(!asRoot)('on a real 8 MiB tmpfs at the models root (skipped unless root: mounting needs root)', () => {
  it('empty is ok, past 80% a warning, past 90% critical, and the ratio agrees with df', async () => {
    const roots = makeRoots()
    await withMount(roots.models, ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs'], async () => {
      const empty = await modelsDisk(roots.env)
      expect(empty.fs).toMatchObject({ mount: roots.models, source: 'tmpfs', fstype: 'tmpfs', roots: [{ name: 'models', path: roots.models }], size_bytes: 8 << 20, disk: 'ok', inodes: 'ok', severity: 'ok' })
      expect(empty.fs.reasons[0]).toBe(`models disk ${roots.models}: 0.0% used, below the warning 80%`)
      expect(empty.problems).toEqual([])
      expect(roundedUp(empty.fs.used_ratio)).toBe(dfPercent(roots.models))

      fillTo(roots.models, 0.84)
      const warned = await modelsDisk(roots.env)
      expect(warned.fs.used_ratio).toBeCloseTo(0.84, 3)
      expect(roundedUp(warned.fs.used_ratio)).toBe(dfPercent(roots.models))
      expect(warned.fs).toMatchObject({ disk: 'warning', severity: 'warning' })
      const warning = `models disk ${roots.models}: 84.0% used, at or above the warning 80% (6.72 MiB used, 1.28 MiB left of 8.00 MiB)`
      expect(warned.problems).toEqual([{ check: 'filesystems', severity: 'warning', key: `filesystems:${roots.models}:disk`, message: warning }])
      expect(warned.fs.reasons).toContain(warning)

      fillTo(roots.models, 0.95)
      const critical = await modelsDisk(roots.env)
      expect(roundedUp(critical.fs.used_ratio)).toBe(dfPercent(roots.models))
      expect(critical.fs).toMatchObject({ disk: 'critical', inodes: 'ok', severity: 'critical' })
      expect(critical.problems.map((p) => p.message)).toEqual([`models disk ${roots.models}: 95.0% used, at or above the critical 90% (7.60 MiB used, 408 KiB left of 8.00 MiB)`])
    })
  })

  it('a critical disk the monitor holds stays critical at 87%, saying why', async () => {
    const roots = makeRoots()
    await withMount(roots.models, ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs'], async () => {
      fillTo(roots.models, 0.87)
      expect((await modelsDisk(roots.env)).fs.disk).toBe('warning')
      const held = await modelsDisk(roots.env, new Map([[`filesystems:${roots.models}:disk`, 'critical']]))
      expect(held.fs.disk).toBe('critical')
      expect(held.problems[0]!.message).toMatch(/: 87\.0% used, still within 5 points of the critical 90% it crossed \(/)
    })
  })

  it('running out of inodes is critical while the disk is ok', async () => {
    const roots = makeRoots()
    await withMount(roots.models, ['-t', 'tmpfs', '-o', 'size=8m,nr_inodes=64', 'tmpfs'], async () => {
      let created = 0
      try {
        for (;; created++) writeFileSync(path.join(roots.models, `empty-${created}`), '')
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err
      }
      const { fs, problems } = await modelsDisk(roots.env)
      // The root directory takes the 64th inode.
      expect(created).toBe(63)
      expect(dfPercent(roots.models, 'ipcent')).toBe(100)
      expect(fs).toMatchObject({ inodes_total: 64, inodes_used: 64, inodes_free: 0, inodes_used_ratio: 1, disk: 'ok', inodes: 'critical', severity: 'critical' })
      const message = `models inodes ${roots.models}: 100.0% used, at or above the critical 90% (64 of 64 inodes used, 0 left)`
      expect(problems).toEqual([{ check: 'filesystems', severity: 'critical', key: `filesystems:${roots.models}:inodes`, message }])
      expect(fs.reasons).toEqual([`models disk ${roots.models}: 0.0% used, below the warning 80%`, message])
    })
  })

  it('names the deepest mount holding a root, its octal escapes decoded', async () => {
    const roots = makeRoots()
    const models = path.join(roots.base, 'model disk')
    mkdirSync(models)
    // Bound onto itself: the same device as /tmp, so only the depth tells the two mounts apart.
    await withMount(models, ['--bind', models], async () => {
      const { filesystems } = await filesystemUsage(loadSettings({ ...roots.env, CITADEL_MODELS_ROOT: models }))
      expect(filesystems.map((f) => f.mount)).toEqual([models])
      expect(filesystems[0]!.roots.map((r) => r.name)).toEqual(['models', 'backup'])
    })
  })

  it('through the CLI, a models disk past critical is a warning of an ok task', async () => {
    const roots = makeRoots()
    await withMount(roots.models, ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs'], async () => {
      await setUp(roots)
      fillTo(roots.models, 0.95)
      const result = await citadelJson(['task', 'check-usage'], roots.env)
      expect(result.code, result.stderr).toBe(0)
      const task = result.doc.tasks[0]
      expect(task.status).toBe('ok')
      expect(task.msg).toMatch(/^3 roots on 2 filesystems: 1 critical/)
      expect(task.warnings).toContain(`models disk ${roots.models}: 95.0% used, at or above the critical 90% (7.60 MiB used, 408 KiB left of 8.00 MiB)`)
      expect(task.data.filesystems.map((f: { mount: string }) => f.mount)).toContain(roots.models)
    })
  })
})
