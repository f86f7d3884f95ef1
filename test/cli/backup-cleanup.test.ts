import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, renameSync, symlinkSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { DAY_MS } from '../../lib/backup/status.ts'
import { backupName, type Backup, type BackupMeta, type Verification } from '../../lib/backup/store.ts'
import { retentionVerdicts } from '../../lib/backup/status.ts'
import { backUp, pointLatest, setUpServer, storeOf } from '../backup-helpers.ts'
import { citadel, citadelJson, snapshot, type Roots } from '../helpers.ts'

/** Renames a backup as if it had been made `days` ago, in its name, its metadata and `latest`. */
function backdate(roots: Roots, name: string, days: number): string {
  const renamed = backupName(new Date(Date.now() - days * DAY_MS), name.endsWith('_full') ? 'full' : 'incremental')
  renameSync(path.join(storeOf(roots), name), path.join(storeOf(roots), renamed))
  editMeta(roots, renamed, (meta) => (meta.name = renamed))
  const latest = path.join(storeOf(roots), 'latest')
  if (readlinkSync(latest) === name) pointLatest(roots, renamed)
  return renamed
}

function editMeta(roots: Roots, name: string, edit: (meta: BackupMeta) => void) {
  const file = path.join(storeOf(roots), name, 'backup.json')
  const meta = JSON.parse(readFileSync(file, 'utf8')) as BackupMeta
  edit(meta)
  writeFileSync(file, JSON.stringify(meta, null, 2) + '\n')
}

const verification = (ok: boolean): Verification => ({
  at: new Date().toISOString(), rate: 1, seed: 1, seeded: false, files_checked: 1, files_hashed: 1, bytes_hashed: 1, ok,
  problems: ok ? [] : [{ kind: 'mismatch', path: 'a.bin', detail: 'hash differs from the manifest' }], transient: [],
})

const entries = (roots: Roots) => readdirSync(storeOf(roots)).sort()
const removedPaths = (task: any) => task.changes.filter((c: any) => c.action === 'remove backup').map((c: any) => path.basename(c.path))

describe('retentionVerdicts', () => {
  const now = new Date('2026-03-01T12:00:00Z')
  const backup = (daysOld: number, verifications: boolean[] = []): Backup => {
    const created = new Date(now.getTime() - daysOld * DAY_MS)
    const name = backupName(created, 'incremental')
    return { name, dir: `/store/${name}`, type: 'incremental', created, meta: { verifications: verifications.map(verification) } as BackupMeta }
  }

  it('keeps the newest N, the newest whose last verification passed, latest and what is within retention', () => {
    const all = [backup(90, [true]), backup(80, [true]), backup(70, [true, false]), backup(60), backup(50), backup(20), backup(10)]
    const verdicts = retentionVerdicts(all, all[3]!.name, { days: 30, keepMin: 1, now })
    expect(verdicts.map((v) => v.verdict)).toEqual(['remove', 'keep: last verified', 'remove', 'keep: latest', 'remove', 'keep: within retention', 'keep: newest 1'])
  })

  it('with DAYS 0 keeps only what a rule keeps, and never more than there are', () => {
    const all = [backup(3), backup(2), backup(1)]
    expect(retentionVerdicts(all, all[2]!.name, { days: 0, keepMin: 2, now }).map((v) => v.verdict)).toEqual(['remove', 'keep: newest 2', 'keep: newest 2'])
    expect(retentionVerdicts(all, null, { days: 0, keepMin: 5, now }).every((v) => v.verdict === 'keep: newest 5')).toBe(true)
    expect(retentionVerdicts([], null, { days: 0, keepMin: 3, now })).toEqual([])
  })
})

describe('backup cleanup', () => {
  it('keeps the newest verified backup and the newest BACKUP_KEEP_MIN past retention, removes the rest; --check removes nothing', async () => {
    const roots = await setUpServer({ BACKUP_KEEP_MIN: '2' })
    const made: string[] = []
    for (let i = 0; i < 5; i++) made.push(await backUp(roots, i ? { 'step.txt': 'x'.repeat(i + 1) } : { 'a.bin': 'alpha', 'step.txt': 'x' }))
    const [b0, b1, b2, b3, b4] = made.map((name, i) => backdate(roots, name, 95 - 10 * i)) as [string, string, string, string, string]
    editMeta(roots, b1, (meta) => meta.verifications.push(verification(true)))
    // b2 passed once, but its last verification failed: it is not a copy known to be good.
    editMeta(roots, b2, (meta) => meta.verifications.push(verification(true), verification(false)))

    const before = snapshot(roots.backup)
    const check = await citadelJson(['backup', 'cleanup', '--check'], roots.env)
    expect(check.code, check.stderr).toBe(0)
    expect(check.doc.tasks[0].status).toBe('changed')
    expect(removedPaths(check.doc.tasks[0])).toEqual([b0, b2])
    expect(check.doc.tasks[0].data.backups.map((b: any) => [b.name, b.verdict])).toEqual([
      [b0, 'remove'], [b1, 'keep: last verified'], [b2, 'remove'], [b3, 'keep: newest 2'], [b4, 'keep: newest 2'],
    ])
    expect(check.doc.tasks[0].msg).toMatch(/^would remove 2 backups \(.+\), kept 3$/)
    expect(snapshot(roots.backup)).toEqual(before)

    const human = await citadel(['backup', 'cleanup', '--check'], roots.env)
    expect(human.stdout).toMatch(/BACKUP\s+AGE\s+VERDICT/)
    expect(human.stdout).toMatch(new RegExp(`${b0}\\s+95d \\d+h\\s+remove`))

    // DAYS: only what is older goes; latest is kept wherever it points.
    const ninety = await citadelJson(['backup', 'cleanup', '90', '--check'], roots.env)
    expect(removedPaths(ninety.doc.tasks[0])).toEqual([b0])
    expect(ninety.doc.tasks[0].data.backups[2].verdict).toBe('keep: within retention')
    pointLatest(roots, b2)
    const pinned = await citadelJson(['backup', 'cleanup', '--check'], roots.env)
    expect(pinned.doc.tasks[0].data.backups[2].verdict).toBe('keep: latest')
    pointLatest(roots, b4)

    const real = await citadelJson(['backup', 'cleanup'], roots.env)
    expect(real.code, real.stderr).toBe(0)
    expect(real.doc.tasks[0].status).toBe('changed')
    expect(real.doc.tasks[0].msg).toMatch(/^removed 2 backups \(.+\), kept 3$/)
    expect(real.doc.tasks[0].changes).toEqual([b0, b2].map((name) => ({ path: path.join(storeOf(roots), name), action: 'remove backup', before: expect.stringMatching(/ old, /), after: null })))
    expect(entries(roots)).toEqual([b1, b3, b4, 'latest'].sort())
    for (const name of [b1, b3, b4]) expect(spawnSync('sha256sum', ['--quiet', '-c', '../SHA256SUMS'], { cwd: path.join(storeOf(roots), name, 'data') }).status).toBe(0)

    const again = await citadelJson(['backup', 'cleanup'], roots.env)
    expect(again.doc.tasks[0].status).toBe('ok')
    expect(again.doc.tasks[0].changes).toEqual([])
    expect(entries(roots)).toEqual([b1, b3, b4, 'latest'].sort())
  })

  it('never touches names outside the pattern, a symlink named like a backup, or a damaged backup', async () => {
    const roots = await setUpServer({ BACKUP_KEEP_MIN: '1' })
    const old = backdate(roots, await backUp(roots, { 'a.bin': 'alpha' }), 100)
    await backUp(roots, { 'a.bin': 'alpha2' })
    const store = storeOf(roots)
    const elsewhere = path.join(roots.base, 'elsewhere')
    mkdirSync(path.join(elsewhere, 'data'), { recursive: true })
    writeFileSync(path.join(elsewhere, 'data', 'precious.bin'), 'precious')
    for (const dir of ['backup_keepme', 'notes', 'backup_20200102_000000_full/data']) {
      mkdirSync(path.join(store, dir), { recursive: true })
      writeFileSync(path.join(store, dir, 'file.txt'), dir)
    }
    symlinkSync(elsewhere, path.join(store, 'backup_20200101_000000_full'))
    symlinkSync(elsewhere, path.join(store, 'backup_20200103_000000_full.partial'))
    writeFileSync(path.join(store, 'backup_20200104_000000_incremental'), 'a file, not a backup')
    const before = snapshot(roots.base)

    const result = await citadelJson(['backup', 'cleanup', '0'], roots.env)
    expect(result.code, result.stderr).toBe(0)
    expect(removedPaths(result.doc.tasks[0])).toEqual([old])
    expect(result.doc.tasks[0].changes).toHaveLength(1)
    expect(result.doc.tasks[0].warnings).toEqual([expect.stringMatching(/^backup_20200102_000000_full is damaged \(backup\.json unreadable: .*\): left alone$/)])
    const after = snapshot(roots.base)
    // What may differ: the removed backup, the mtime of the store directory it was in, and the run log.
    const untouched = (snap: Record<string, string>) =>
      Object.fromEntries(Object.entries(snap).filter(([rel]) => !rel.startsWith('app') && rel !== 'backup/models' && !rel.startsWith(`backup/models/${old}`)))
    expect(untouched(after)).toEqual(untouched(before))
    expect(readFileSync(path.join(elsewhere, 'data', 'precious.bin'), 'utf8')).toBe('precious')
    expect(existsSync(path.join(store, old))).toBe(false)
  })

  it('removing an old full backup leaves a newer incremental intact: content, manifest, fewer links', async () => {
    const roots = await setUpServer({ BACKUP_KEEP_MIN: '1' })
    const full = backdate(roots, await backUp(roots, { 'a.bin': 'a'.repeat(100), 'b.bin': 'b'.repeat(200), 'c.bin': 'c'.repeat(300) }), 40)
    const incremental = await backUp(roots, { 'c.bin': 'C'.repeat(350) })
    const data = path.join(storeOf(roots), incremental, 'data')
    const links = () => ['a.bin', 'b.bin', 'c.bin'].map((f) => spawnSync('stat', ['-c', '%h', path.join(data, f)], { encoding: 'utf8' }).stdout.trim())
    expect(links()).toEqual(['2', '2', '1'])

    const result = await citadelJson(['backup', 'cleanup'], roots.env)
    expect(result.code, result.stderr).toBe(0)
    expect(removedPaths(result.doc.tasks[0])).toEqual([full])
    // Only the old c.bin was the full backup's alone; a.bin and b.bin live on in the incremental.
    expect(result.doc.tasks[0].data.freed_bytes).toBe(300)
    expect(result.doc.tasks[0].msg).toBe('removed 1 backup (300 B), kept 1')
    expect(links()).toEqual(['1', '1', '1'])
    expect(['a.bin', 'b.bin', 'c.bin'].map((f) => readFileSync(path.join(data, f), 'utf8'))).toEqual(['a'.repeat(100), 'b'.repeat(200), 'C'.repeat(350)])
    const sums = spawnSync('sha256sum', ['-c', '../SHA256SUMS'], { cwd: data, encoding: 'utf8' })
    expect(sums.status, sums.stdout + sums.stderr).toBe(0)
  })

  it('a delete that fails halfway leaves a partial backup, never a complete-looking one, and the next cleanup finishes it', async (ctx) => {
    const roots = await setUpServer({ BACKUP_KEEP_MIN: '1' })
    const old = backdate(roots, await backUp(roots, { 'a.bin': 'alpha', 'b.bin': 'bravo' }), 100)
    await backUp(roots, { 'a.bin': 'alpha2', 'b.bin': 'bravo2' })
    // An immutable file stops the delete partway, as a crash or an I/O error would.
    const stuck = path.join(storeOf(roots), old, 'data', 'b.bin')
    if (spawnSync('chattr', ['+i', stuck]).status !== 0) return ctx.skip('needs root and a filesystem with chattr +i to make a delete fail halfway')
    try {
      const failed = await citadelJson(['backup', 'cleanup'], roots.env)
      expect(failed.code).toBe(2)
      expect(entries(roots)).not.toContain(old)
      expect(entries(roots)).toContain(`${old}.partial`)
      expect((await citadelJson(['backup', 'status'], roots.env)).doc.tasks[0].data.backups.map((b: any) => b.name)).not.toContain(old)
    } finally {
      // Wherever the file ended up, it must be deletable again for the next cleanup and for this test's own.
      for (const dir of [old, `${old}.partial`]) spawnSync('chattr', ['-i', path.join(storeOf(roots), dir, 'data', 'b.bin')])
    }
    const next = await citadelJson(['backup', 'cleanup'], roots.env)
    expect(next.code, next.stderr).toBe(0)
    expect(next.doc.tasks[0].warnings).toEqual([`${old}.partial was left by an interrupted backup or cleanup: removed it`])
    expect(entries(roots).filter((n) => n.startsWith(old))).toEqual([])
  })

  it('removes leftover .partial directories and says so', async () => {
    const roots = await setUpServer()
    const kept = await backUp(roots, { 'a.bin': 'alpha' })
    const partial = path.join(storeOf(roots), 'backup_20260101_000000_incremental.partial')
    mkdirSync(path.join(partial, 'data'), { recursive: true })
    writeFileSync(path.join(partial, 'data', 'a.bin'), 'half')

    const check = await citadelJson(['backup', 'cleanup', '--check'], roots.env)
    expect(check.doc.tasks[0].changes).toEqual([{ path: partial, action: 'remove interrupted backup', before: 'partial copy', after: null }])
    expect(existsSync(partial)).toBe(true)

    const result = await citadelJson(['backup', 'cleanup'], roots.env)
    expect(result.code, result.stderr).toBe(0)
    expect(result.doc.tasks[0].warnings).toEqual(['backup_20260101_000000_incremental.partial was left by an interrupted backup or cleanup: removed it'])
    expect(result.doc.tasks[0].msg).toBe('removed 1 partial backup, kept 1')
    expect(entries(roots)).toEqual([kept, 'latest'])
    expect((await citadelJson(['backup', 'cleanup'], roots.env)).doc.tasks[0].changes).toEqual([])
  })

  it('refuses DAYS that is not a whole number: exit 4, one line naming DAYS, nothing changed', async () => {
    const roots = await setUpServer()
    await backUp(roots, { 'a.bin': 'alpha' })
    const before = snapshot(roots.base)
    for (const days of ['abc', '1.5']) {
      const result = await citadel(['backup', 'cleanup', days], roots.env)
      expect(result.code).toBe(4)
      expect(result.stdout).toBe('')
      expect(result.stderr).toBe(`citadel: DAYS "${days}" is not valid: expected a whole number of days, e.g. 30\n`)
    }
    expect(snapshot(roots.base)).toEqual(before)
  })
})
