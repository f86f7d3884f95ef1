import { mkdirSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { DAY_MS } from '../../lib/backup/status.ts'
import { backupName, type BackupMeta } from '../../lib/backup/store.ts'
import { backUp, pointLatest, setUpServer, storeOf } from '../backup-helpers.ts'
import { citadel, citadelJson, makeRoots, setUp, snapshot, type Roots } from '../helpers.ts'

async function status(roots: Roots) {
  const result = await citadelJson(['backup', 'status'], roots.env)
  expect(result.code, result.stderr).toBe(0)
  expect(result.doc.tasks[0].status).toBe('ok')
  return result.doc.tasks[0]
}

describe('backup status', () => {
  it('reports each backup, the bytes only it holds, the totals and the backup disk', async () => {
    const roots = await setUpServer()
    const full = await backUp(roots, { 'a.bin': 'a'.repeat(1000), 'b.bin': 'b'.repeat(2000), 'c.bin': 'c'.repeat(3000) })
    const incremental = await backUp(roots, { 'b.bin': 'B'.repeat(2500) })
    const before = snapshot(roots.backup)

    const task = await status(roots)
    expect(task.data.backups).toEqual([
      { name: full, type: 'full', source: roots.active, created: expect.any(String), age: expect.stringMatching(/^\d+m$/), age_seconds: expect.any(Number), files: 3, bytes: 6000, unique_bytes: 2000, last_verification: null, latest: false },
      { name: incremental, type: 'incremental', source: roots.active, created: expect.any(String), age: expect.stringMatching(/^\d+m$/), age_seconds: expect.any(Number), files: 3, bytes: 6500, unique_bytes: 2500, last_verification: null, latest: true },
    ])
    // created is the time in the name, which is UTC.
    expect(task.data.backups.map((b: any) => backupName(new Date(b.created), b.type))).toEqual([full, incremental])
    expect(task.data.totals).toEqual({ backups: 2, bytes: 12500, bytes_on_disk: 8500 })
    expect(task.data.disk.total_bytes).toBeGreaterThan(0)
    expect(task.data.disk.free_bytes).toBeGreaterThan(0)
    expect(task.data.disk.free_bytes).toBeLessThanOrEqual(task.data.disk.total_bytes)
    expect(task.data.latest).toBe(incremental)
    // Never verified, but made minutes ago: not yet a problem (see verificationState).
    expect(task.warnings).toEqual([])
    expect(task.data.warnings).toEqual(task.warnings)
    expect(task.changes).toEqual([])
    expect(snapshot(roots.backup)).toEqual(before)

    const human = await citadel(['backup', 'status'], roots.env)
    expect(human.stdout).toMatch(/NAME\s+TYPE\s+AGE\s+FILES\s+SIZE\s+UNIQUE\s+VERIFIED\s+LATEST/)
    expect(human.stdout).toMatch(new RegExp(`${incremental}\\s+incremental\\s+\\d+m\\s+3\\s+6.35 KiB\\s+2.44 KiB\\s+never\\s+yes`))
    expect(human.stdout).toMatch(/total: 2 backups, 12.2 KiB \(8.30 KiB on disk\); backup disk: .+ free of .+/)
  })

  it('warns about no backup, partials, a newest never verified or failed, an old newest, latest elsewhere, damaged backups', async () => {
    const roots = makeRoots()
    const missing = await citadelJson(['backup', 'status'], roots.env)
    expect(missing.code).toBe(2)
    // A backup root initial-setup has not marked is refused before the store is read.
    expect(missing.doc.tasks[0].msg).toBe(`refused, nothing done: CITADEL_BACKUP_ROOT ${roots.backup} has no citadel mark (.citadel-root.json): is the disk mounted? check with findmnt ${roots.backup}; on a new server run citadel run initial-setup`)

    await setUp(roots)
    const empty = await status(roots)
    expect(empty.msg).toMatch(/^no complete backup; backup disk: .+ free of .+; 1 warning$/)
    expect(empty.warnings).toEqual([`no complete backup in ${storeOf(roots)}`])

    const full = await backUp(roots, { 'a.bin': 'alpha' })
    const newest = await backUp(roots, { 'a.bin': 'alpha, changed' })
    pointLatest(roots, full)
    const partial = 'backup_20260101_000000_incremental.partial'
    mkdirSync(path.join(storeOf(roots), partial, 'data'), { recursive: true })
    mkdirSync(path.join(storeOf(roots), 'backup_20200101_000000_full', 'data'), { recursive: true })
    const damaged = expect.stringMatching(/^backup_20200101_000000_full is damaged \(backup\.json unreadable: .+\): never counted, never removed$/)
    const warned = await status(roots)
    expect(warned.warnings).toEqual([
      `latest points at ${full}, not at the newest complete backup ${newest}`,
      `partial backups left by interrupted creates: ${partial}; backup cleanup removes them`,
      damaged,
    ])
    expect(warned.data.partials).toEqual([partial])
    expect(warned.data.damaged).toEqual([{ name: 'backup_20200101_000000_full', reason: expect.any(String) }])
    expect(warned.data.backups.map((b: any) => b.name)).toEqual([full, newest])

    // Both made over a week ago, the last verification of the newest failed, and no latest at all.
    const old = backupName(new Date(Date.now() - 9 * DAY_MS), 'incremental')
    renameSync(path.join(storeOf(roots), full), path.join(storeOf(roots), backupName(new Date(Date.now() - 10 * DAY_MS), 'full')))
    renameSync(path.join(storeOf(roots), newest), path.join(storeOf(roots), old))
    const metaFile = path.join(storeOf(roots), old, 'backup.json')
    const meta = JSON.parse(readFileSync(metaFile, 'utf8')) as BackupMeta
    const failed = { at: new Date().toISOString(), rate: 1, seed: 1, seeded: false, files_checked: 1, files_hashed: 1, bytes_hashed: 14, ok: false, problems: [{ kind: 'mismatch' as const, path: 'a.bin', detail: 'hash differs' }], transient: [] }
    meta.verifications.push(failed)
    writeFileSync(metaFile, JSON.stringify(meta))
    unlinkSync(path.join(storeOf(roots), 'latest'))
    const stale = await status(roots)
    expect(stale.data.backups[1]).toMatchObject({ name: old, age: expect.stringMatching(/^9d \d+h$/), latest: false, last_verification: { at: failed.at, rate: 1, ok: false, problems: 1 } })
    expect(stale.data.latest).toBeNull()
    expect(stale.warnings).toEqual([
      `the newest backup, ${old}, is ${stale.data.backups[1].age} old (more than 8 days)`,
      `the last verification of the newest backup, ${old}, failed at ${failed.at}: 1 problem (citadel backup verify ${old} --sample 1 names them)`,
      `latest is missing or not a link; it should point at ${old}`,
      `partial backups left by interrupted creates: ${partial}; backup cleanup removes them`,
      damaged,
    ])
  })
})
