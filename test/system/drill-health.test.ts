// Restores and drills as monitoring sees them, through the real command on temporary roots: backup status,
// status, health-check and its BACKUP_DRILL_MAX_AGE_DAYS warning, the monitor's metrics, and weekly's drill.
import { spawnSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { drillProblem } from '../../lib/backup/status.ts'
import { backupName, createdOf, type Backup, type BackupMeta, type RestoreRecord } from '../../lib/backup/store.ts'
import { DAY_MS } from '../../lib/infra/format.ts'
import { backUp, setUpServer, storeOf } from '../backup-helpers.ts'
import { citadel, citadelJson, type Roots } from '../helpers.ts'

// No registered model: one that is not there is a warning of its own (vLLM cannot load it).
const CALM = { STORAGE_MONITOR_DISK_USAGE_WARNING: '0.98', STORAGE_MONITOR_DISK_USAGE_CRITICAL: '0.99', STORAGE_MONITOR_INODE_USAGE_WARNING: '0.98', STORAGE_MONITOR_INODE_USAGE_CRITICAL: '0.99', MODEL_REGISTRY: '' }
const promtool = spawnSync('promtool', ['--version']).status === 0

const metaFile = (roots: Roots, name: string) => path.join(storeOf(roots), name, 'backup.json')
const readMeta = (roots: Roots, name: string): BackupMeta => JSON.parse(readFileSync(metaFile(roots, name), 'utf8'))
const rewriteRestores = (roots: Roots, name: string, edit: (restores: RestoreRecord[]) => RestoreRecord[]) => {
  const meta = readMeta(roots, name)
  writeFileSync(metaFile(roots, name), JSON.stringify({ ...meta, restores: edit(meta.restores ?? []) }, null, 2) + '\n')
}
const drillProblems = (doc: any) => doc.problems.filter((p: any) => p.key === 'backups:drill')

/** A server with one backup of two model directories, `m` (2000 bytes) and `n`. */
async function backedUp(env: Record<string, string> = {}) {
  const roots = await setUpServer({ ...CALM, ...env })
  const name = await backUp(roots, { 'm/w.safetensors': 'w'.repeat(2000), 'n/config.json': '{}\n' })
  return { roots, name }
}

async function drill(roots: Roots) {
  const run = await citadelJson(['backup', 'restore', '--drill'], roots.env)
  expect(run.code, run.stdout + run.stderr).toBe(0)
  return run.doc.tasks[0].data.record as RestoreRecord
}

describe('the last restore and drill', () => {
  it('backup status, status and health-check show a drill and a restore; a drill keeps the drill check quiet', async () => {
    const { roots, name } = await backedUp()
    const before = await citadelJson(['backup', 'status'], roots.env)
    expect(before.doc.tasks[0].data.restores).toEqual({ restore: null, drill: null })
    expect((await citadel(['backup', 'status'], roots.env)).stdout).toContain('last drill: never')

    const record = await drill(roots)
    expect(record).toMatchObject({ drill: true, ok: true, what: ['m'], bytes_copied: 2000 })
    const status = await citadelJson(['backup', 'status'], roots.env)
    expect(status.doc.tasks[0].data.restores).toEqual({
      restore: null,
      drill: { backup: name, at: record.at, age: '0m', age_seconds: expect.any(Number), what: ['m'], to: record.to, bytes_copied: 2000, bytes_reused: 0, files_verified: 1, duration_ms: record.duration_ms },
    })
    const shown = await citadel(['backup', 'status'], roots.env)
    expect(shown.stdout).toContain(`last drill: 0m ago from ${name}: m, 1.95 KiB copied in `)
    expect(shown.stdout).toContain('last restore: never')

    const out = path.join(roots.base, 'restored')
    const restored = await citadelJson(['backup', 'restore', '--to', out, '--path', 'n'], roots.env)
    expect(restored.code, restored.stdout + restored.stderr).toBe(0)
    const health = await citadelJson(['health-check'], roots.env)
    expect(health.code, JSON.stringify(health.doc.problems)).toBe(0)
    expect(health.doc.backups.restores.drill).toMatchObject({ backup: name, at: record.at, what: ['m'] })
    expect(health.doc.backups.restores.restore).toMatchObject({ backup: name, what: ['n'], to: out, bytes_copied: 3 })
    const glance = await citadel(['status'], roots.env)
    expect(glance.stdout).toMatch(new RegExp(`\\nrestore  last drill 0m ago from ${name}: m, .*; last restore 0m ago from ${name}: n into ${out}, 3 B copied in \\d+s\\n`))
  })

  it('health-check warns, naming BACKUP_DRILL_MAX_AGE_DAYS and what to run, once the last good drill is older; 0 turns it off', async () => {
    const { roots, name } = await backedUp()
    await drill(roots)
    const fortyDaysAgo = new Date(Date.now() - 40 * DAY_MS).toISOString()
    // A failed drill since then proves nothing: only the one that succeeded 40 days ago counts.
    rewriteRestores(roots, name, (rs) => [...rs.map((r) => ({ ...r, at: fortyDaysAgo })), { ...rs[0]!, at: new Date().toISOString(), ok: false, error: 'a file differs' }])
    const stale = await citadel(['health-check'], roots.env)
    expect(stale.code, stale.stdout).toBe(1)
    expect(stale.stdout.split('\n')).toContain(`warning  backups     no restore drill of the backups of ${roots.active} succeeded within BACKUP_DRILL_MAX_AGE_DAYS=35 days (the last, from ${name}, was 40d 0h ago): run citadel backup restore --drill`)
    const json = await citadelJson(['health-check'], roots.env)
    expect(drillProblems(json.doc)).toHaveLength(1)
    expect(json.doc.backups.restores.drill.at).toBe(fortyDaysAgo)

    expect(drillProblems((await citadelJson(['health-check'], { ...roots.env, BACKUP_DRILL_MAX_AGE_DAYS: '41' })).doc)).toEqual([])
    const off = await citadel(['health-check'], { ...roots.env, BACKUP_DRILL_MAX_AGE_DAYS: '0' })
    expect(off.code, off.stdout).toBe(0)
    expect(off.stdout).not.toContain('drill')

    await drill(roots)
    expect((await citadel(['health-check'], roots.env)).code).toBe(0)
  })

  it('monitor --once exports when the last drill and restore started and how long they took', async (ctx) => {
    const { roots } = await backedUp()
    const prom = () => readFileSync(path.join(roots.app, 'metrics', 'citadel.prom'), 'utf8')
    expect((await citadel(['monitor', '--once'], roots.env)).code).toBe(0)
    // Declared in every file, without a sample until the first drill.
    expect(prom()).toContain('# TYPE citadel_backup_last_drill_timestamp_seconds gauge\n')
    expect(prom()).not.toMatch(/^citadel_backup_last_drill/m)

    const record = await drill(roots)
    expect((await citadel(['monitor', '--once'], roots.env)).code).toBe(0)
    const text = prom()
    expect(text).toContain(`# TYPE citadel_backup_last_drill_timestamp_seconds gauge\ncitadel_backup_last_drill_timestamp_seconds ${Date.parse(record.at) / 1000}\n`)
    expect(text).toContain(`# TYPE citadel_backup_last_drill_duration_seconds gauge\ncitadel_backup_last_drill_duration_seconds ${record.duration_ms / 1000}\n`)
    expect(text).toContain('# HELP citadel_backup_last_drill_timestamp_seconds ')
    expect(text).not.toMatch(/^citadel_backup_last_restore/m)

    const restored = await citadelJson(['backup', 'restore', '--to', path.join(roots.base, 'restored')], roots.env)
    expect(restored.code, restored.stdout + restored.stderr).toBe(0)
    await citadel(['monitor', '--once'], roots.env)
    expect(prom()).toContain(`citadel_backup_last_restore_timestamp_seconds ${Date.parse(restored.doc.tasks[0].data.record.at) / 1000}\n`)
    expect(prom()).toMatch(/\ncitadel_backup_last_restore_duration_seconds \d/)
    if (!promtool) return ctx.skip('promtool is not installed (Debian package prometheus): the textfile was written but not linted')
    const lint = spawnSync('promtool', ['check', 'metrics'], { input: prom(), encoding: 'utf8' })
    expect(lint.stdout + lint.stderr).toBe('')
  })

  it('weekly drills a restore of the backup it made and verified', async () => {
    const roots = await setUpServer(CALM)
    await backUp(roots, { 'm/w.safetensors': 'w'.repeat(2000), 'n/config.json': '{}\n' })
    const weekly = await citadelJson(['run', 'weekly', '--skip-tags', 'perf'], roots.env)
    expect(weekly.code, weekly.stderr).toBe(0)
    const names = weekly.doc.tasks.map((t: any) => t.name)
    expect(names.indexOf('backup-restore')).toBe(names.indexOf('backup-verify') + 1)
    const step = weekly.doc.tasks.find((t: any) => t.name === 'backup-restore')
    const made = weekly.doc.tasks[0].data.backup
    expect(step).toMatchObject({ status: 'ok', data: { backup: made, record: { drill: true, ok: true } } })
    expect(step.msg).toMatch(new RegExp(`^drill from ${made}: m: 1 file, `))
    expect(readMeta(roots, made).restores).toMatchObject([{ drill: true, ok: true, what: ['m'] }])
    // The next week drills the model drilled longest ago.
    const next = await citadelJson(['run', 'weekly', '--skip-tags', 'perf'], roots.env)
    expect(next.doc.tasks.find((t: any) => t.name === 'backup-restore').data.record.what).toEqual(['n'])
  })
})

describe('drillProblem', () => {
  const now = new Date('2026-12-01T12:00:00Z')
  const daysAgo = (days: number) => new Date(now.getTime() - days * DAY_MS)
  const backup = (created: Date, restores: Partial<RestoreRecord>[] = [], source = '/m/active'): Backup => {
    const name = backupName(created, 'full')
    const record = (r: Partial<RestoreRecord>): RestoreRecord => ({ at: now.toISOString(), what: ['m'], to: '/s', drill: true, bytes_copied: 1, bytes_reused: 0, files_verified: 1, duration_ms: 1, ok: true, error: null, from_elsewhere: {}, ...r })
    return { name, dir: `/b/${name}`, type: 'full', created: createdOf(name)!, meta: { source, restores: restores.map(record) } as BackupMeta }
  }

  it('gives a new chain BACKUP_DRILL_MAX_AGE_DAYS before the first drill is due, and counts only good drills', () => {
    expect(drillProblem([], now, 35)).toBeNull()
    expect(drillProblem([backup(daysAgo(30))], now, 35)).toBeNull()
    const old = backup(daysAgo(36))
    expect(drillProblem([old], now, 35)).toBe(`no restore drill of the backups of /m/active succeeded within BACKUP_DRILL_MAX_AGE_DAYS=35 days (none since ${old.name}, made 36d 0h ago): run citadel backup restore --drill`)
    expect(drillProblem([old], now, 0)).toBeNull()
    expect(drillProblem([old, backup(daysAgo(1), [{ at: daysAgo(2).toISOString() }])], now, 35)).toBeNull()
    expect(drillProblem([old, backup(daysAgo(1), [{ at: daysAgo(2).toISOString(), ok: false }])], now, 35)).toContain('(none since')
    // A restore into place is no drill: a drill proves the backup comes back without touching the models.
    expect(drillProblem([old, backup(daysAgo(1), [{ at: daysAgo(2).toISOString(), drill: false }])], now, 35)).toContain('(none since')
  })
})
