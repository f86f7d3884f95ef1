// Each source is its own chain, and one rule (lib/backup/status.ts verificationState) says how far the
// newest backup can be trusted, in the same words in backup status, health-check and status.
import { readFileSync, readlinkSync, unlinkSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { DAY_MS, verificationState } from '../../lib/backup/status.ts'
import { backupName, type Backup, type BackupMeta, type Verification } from '../../lib/backup/store.ts'
import { backUp, setUpServer, storeOf, writeFile } from '../backup-helpers.ts'
import { citadel, citadelJson, type Roots } from '../helpers.ts'

const latestOf = (roots: Roots) => readlinkSync(path.join(storeOf(roots), 'latest'))

function editMeta(roots: Roots, name: string, edit: (meta: BackupMeta) => void) {
  const file = path.join(storeOf(roots), name, 'backup.json')
  const meta = JSON.parse(readFileSync(file, 'utf8')) as BackupMeta
  edit(meta)
  writeFileSync(file, JSON.stringify(meta, null, 2) + '\n')
}

describe('each source is its own chain', () => {
  it('a backup of another source starts its own chain, leaves latest to the models, and cleanup keeps it', async () => {
    const roots = await setUpServer({ BACKUP_KEEP_MIN: '1' })
    const models = await backUp(roots, { 'm/a.bin': 'a'.repeat(3000) })
    const hf = path.join(roots.base, 'hf-cache')
    writeFile(path.join(hf, 'hub/model/blob.bin'), 'h'.repeat(5000))

    const first = await citadelJson(['backup', 'create', hf], roots.env)
    expect(first.code, first.stderr).toBe(0)
    expect(first.doc.tasks[0].data).toMatchObject({ type: 'full', source: hf, parent: null })
    expect(first.doc.tasks[0].warnings).toEqual([])
    expect(first.doc.tasks[0].changes.map((c: any) => c.action)).toEqual(['create full backup'])
    expect(latestOf(roots)).toBe(models)

    const second = await citadelJson(['backup', 'create', hf], roots.env)
    expect(second.doc.tasks[0].data).toMatchObject({ type: 'incremental', source: hf, parent: first.doc.tasks[0].data.backup, copied_bytes: 0 })
    // The daily incremental of the models still links to the models' backup: nothing is copied again.
    const daily = await citadelJson(['backup', 'create', '--type', 'incremental'], roots.env)
    expect(daily.doc.tasks[0].data).toMatchObject({ type: 'incremental', source: roots.active, parent: models, copied_bytes: 0 })
    expect(latestOf(roots)).toBe(daily.doc.tasks[0].data.backup)

    const status = await citadelJson(['backup', 'status'], roots.env)
    expect(status.doc.tasks[0].data.backups.map((b: any) => [b.name, b.source])).toEqual([
      [models, roots.active], [first.doc.tasks[0].data.backup, hf], [second.doc.tasks[0].data.backup, hf], [daily.doc.tasks[0].data.backup, roots.active],
    ])
    expect((await citadel(['backup', 'status'], roots.env)).stdout).toMatch(new RegExp(`${second.doc.tasks[0].data.backup} .+ ${hf}\\n`))

    // Without `latest`, verify still means the models' newest backup, not the newer one of the cache.
    const hfNewest = await citadelJson(['backup', 'create', hf], roots.env)
    expect(hfNewest.code, hfNewest.stderr).toBe(0)
    unlinkSync(path.join(storeOf(roots), 'latest'))
    const verify = await citadelJson(['backup', 'verify'], roots.env)
    expect(verify.code, verify.stderr).toBe(0)
    expect(verify.doc.tasks[0].data.backup).toBe(daily.doc.tasks[0].data.backup)

    const cleanup = await citadelJson(['backup', 'cleanup', '0'], roots.env)
    expect(cleanup.code, cleanup.stderr).toBe(0)
    expect(cleanup.doc.tasks[0].data.backups.map((b: any) => b.verdict)).toEqual(['remove', 'remove', 'remove', 'keep: newest 1', 'keep: newest 1'])
  })
})

describe('one rule for the last verification', () => {
  it('backup status, health-check and status judge the newest backup alike, never with an older one\'s "ok"', async () => {
    const roots = await setUpServer({ STORAGE_MONITOR_DISK_USAGE_WARNING: '0.98', STORAGE_MONITOR_DISK_USAGE_CRITICAL: '0.99', STORAGE_MONITOR_INODE_USAGE_WARNING: '0.98', STORAGE_MONITOR_INODE_USAGE_CRITICAL: '0.99' })
    const verified = await backUp(roots, { 'm/a.bin': 'alpha' })
    expect((await citadelJson(['backup', 'verify', '--sample', '1'], roots.env)).code).toBe(0)
    const newest = await backUp(roots, { 'm/b.bin': 'beta' })

    const judged = async () => {
      const status = (await citadelJson(['backup', 'status'], roots.env)).doc.tasks[0].warnings.filter((w: string) => w.includes('verif'))
      const health = (await citadelJson(['health-check'], roots.env)).doc.problems.filter((p: any) => p.key === 'backups:verification').map((p: any) => p.message)
      const line = (await citadel(['status'], roots.env)).stdout.split('\n').find((l) => l.startsWith('backup '))
      return { status, health, line }
    }
    // Verified a moment ago, the newest made since: a daily incremental between two weekly verifies.
    const fresh = await judged()
    expect(fresh.status).toEqual([])
    expect(fresh.health).toEqual([])
    expect(fresh.line).toMatch(new RegExp(`^backup   ${newest}, \\d+m old; not verified yet; ${verified} verified ok \\d+m ago$`))

    // That verification was ten days ago: the newest was never verified, and all three say so in the same words.
    editMeta(roots, verified, (meta) => (meta.verifications[0]!.at = new Date(Date.now() - 10 * DAY_MS).toISOString()))
    const stale = await judged()
    const warning = `the newest backup, ${newest}, was never verified; the last verification, of ${verified}, passed 10d 0h ago (more than 8 days)`
    expect(stale.status).toEqual([warning])
    expect(stale.health).toEqual([warning])
    expect(stale.line).toMatch(new RegExp(`^backup   ${newest}, \\d+m old; never verified; the last verification, of ${verified}, passed 10d 0h ago \\(more than 8 days\\)$`))
  })
})

describe('verificationState', () => {
  const now = new Date('2026-03-01T12:00:00Z')
  const check = (daysAgo: number, ok: boolean): Verification => ({
    at: new Date(now.getTime() - daysAgo * DAY_MS).toISOString(), rate: 1, seed: 1, seeded: false, files_checked: 1, files_hashed: 1, bytes_hashed: 1, ok,
    problems: ok ? [] : [{ kind: 'mismatch', path: 'a.bin', detail: 'hash differs from the manifest' }], transient: [],
  })
  const backup = (daysOld: number, verifications: Verification[] = [], files = 1): Backup => {
    const created = new Date(now.getTime() - daysOld * DAY_MS)
    const name = backupName(created, 'incremental')
    return { name, dir: `/store/${name}`, type: 'incremental', created, meta: { source: '/models/active', files, verifications } as unknown as BackupMeta }
  }
  const judge = (chain: Backup[]) => {
    const v = verificationState(chain, now)!
    return [v.text, v.problem]
  }

  it('judges the newest backup by its own verification, else by the chain within 8 days; a failure is never forgotten', () => {
    const [old, mid, top] = [backup(12, [check(11, true)]), backup(9), backup(1)]
    expect(verificationState([], now)).toBeNull()
    expect(judge([backup(1, [check(0.5, true)])])).toEqual(['verified ok 12h 0m ago', null])
    expect(judge([backup(1, [check(0.5, false)])])).toEqual(['last verification FAILED 12h 0m ago: 1 problem', expect.stringMatching(/^the last verification of the newest backup, \S+, failed at \S+: 1 problem \(citadel backup verify \S+ --sample 1 names them\)$/)])
    expect(judge([backup(3, [check(2, true)]), top])).toEqual([expect.stringMatching(/^not verified yet; \S+ verified ok 2d 0h ago$/), null])
    expect(judge([backup(3, [check(2, false)]), top])[1]).toMatch(/^the newest backup, \S+, was never verified; the last verification, of \S+ at \S+, failed: 1 problem \(citadel backup verify \S+ --sample 1 names them\)$/)
    expect(judge([old, top])[1]).toBe(`the newest backup, ${top.name}, was never verified; the last verification, of ${old.name}, passed 11d 0h ago (more than 8 days)`)
    expect(judge([backup(3), top])).toEqual(['not verified yet', null])
    expect(judge([mid, top])[1]).toBe(`the newest backup, ${top.name}, was never verified, nor any backup of /models/active since ${mid.name}, made 9d 0h ago (more than 8 days)`)
    // An empty backup verified ok vouches for nothing.
    expect(judge([old, backup(2, [check(1, true)], 0), top])[1]).toMatch(/passed 11d 0h ago \(more than 8 days\)$/)
  })
})
