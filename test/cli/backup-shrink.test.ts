// An unmounted or emptied model disk must not turn into an empty backup that pushes the good one out.
import { existsSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { DAY_MS } from '../../lib/backup/status.ts'
import { backupName, type BackupMeta } from '../../lib/backup/store.ts'
import { backUp, setUpServer, storeOf, writeFile } from '../backup-helpers.ts'
import { citadelJson, snapshot, type Roots } from '../helpers.ts'

/** The store, all but the mtime of its own directory, which the store lock's file touches. */
function store(roots: Roots) {
  const { '.': _, ...rest } = snapshot(storeOf(roots))
  return rest
}

const entries = (roots: Roots) => readdirSync(storeOf(roots)).filter((n) => n.startsWith('backup_')).sort()

/** Moves a backup `days` into the past, in its name, its metadata and `latest`. */
function backdate(roots: Roots, name: string, days: number): string {
  const renamed = backupName(new Date(Date.now() - days * DAY_MS), name.endsWith('_full') ? 'full' : 'incremental')
  renameSync(path.join(storeOf(roots), name), path.join(storeOf(roots), renamed))
  const file = path.join(storeOf(roots), renamed, 'backup.json')
  const meta = JSON.parse(readFileSync(file, 'utf8')) as BackupMeta
  meta.name = renamed
  writeFileSync(file, JSON.stringify(meta))
  const latest = path.join(storeOf(roots), 'latest')
  if (readlinkSync(latest) === name) {
    rmSync(latest)
    symlinkSync(renamed, latest)
  }
  return renamed
}

describe('backup create refuses a source that looks emptied', () => {
  it('refuses an empty source, naming it, and changes nothing; --force makes the backup with a warning', async () => {
    const roots = await setUpServer()
    const before = store(roots)
    const refused = await citadelJson(['backup', 'create'], roots.env)
    expect(refused.code).toBe(2)
    expect(refused.doc.tasks[0].status).toBe('failed')
    expect(refused.doc.tasks[0].msg).toBe(`${roots.active} holds no files: refusing to make an empty backup; check that the model disk is mounted and the models are in place, or rerun with --force to back it up anyway`)
    expect(store(roots)).toEqual(before)

    const forced = await citadelJson(['backup', 'create', '--force'], roots.env)
    expect(forced.code, forced.stderr).toBe(0)
    expect(forced.doc.tasks[0].warnings).toEqual([`${roots.active} holds no files: refusing to make an empty backup: backed up anyway (--force)`])
    expect(entries(roots)).toEqual([forced.doc.tasks[0].data.backup])
  })

  it('refuses a source whose files or bytes fell by more than BACKUP_MAX_SHRINK, naming both figures', async () => {
    const roots = await setUpServer()
    const files = { 'm/a.bin': 'a'.repeat(4000), 'm/b.bin': 'b'.repeat(4000), 'm/c.bin': 'c'.repeat(4000), 'm/d.bin': 'd'.repeat(4000) }
    const first = await backUp(roots, files)
    for (const f of ['m/b.bin', 'm/c.bin', 'm/d.bin']) rmSync(path.join(roots.active, f))
    const before = store(roots)

    const refused = await citadelJson(['backup', 'create'], roots.env)
    expect(refused.code).toBe(2)
    expect(refused.doc.tasks[0].msg).toBe(`${roots.active} holds 1 file, 3.91 KiB; its previous backup ${first} holds 4 files, 15.6 KiB: a fall of 75%, more than BACKUP_MAX_SHRINK=0.5 allows; check that the model disk is mounted and the models are in place, or rerun with --force to back it up anyway`)
    expect(store(roots)).toEqual(before)

    // SYMLINK_FORCE_RECREATE is --force for the links only: it must not wave the shrunk source through.
    const linksForced = await citadelJson(['backup', 'create'], { ...roots.env, SYMLINK_FORCE_RECREATE: 'true' })
    expect(linksForced.code).toBe(2)
    expect(linksForced.doc.tasks[0].msg).toBe(refused.doc.tasks[0].msg)
    expect(store(roots)).toEqual(before)

    // Bytes alone: four files still there, but most of their content gone.
    writeFile(path.join(roots.active, 'm/b.bin'), 'b')
    writeFile(path.join(roots.active, 'm/c.bin'), 'c')
    writeFile(path.join(roots.active, 'm/d.bin'), 'd')
    const bytes = await citadelJson(['backup', 'create'], roots.env)
    expect(bytes.code).toBe(2)
    expect(bytes.doc.tasks[0].msg).toMatch(/holds 4 files, 3.91 KiB; its previous backup .+ holds 4 files, 15.6 KiB: a fall of 75%/)

    const allowed = await citadelJson(['backup', 'create'], { ...roots.env, BACKUP_MAX_SHRINK: '0.8' })
    expect(allowed.code, allowed.stderr).toBe(0)
    expect(allowed.doc.tasks[0].warnings).toEqual([])

    rmSync(path.join(roots.active, 'm'), { recursive: true })
    writeFile(path.join(roots.active, 'one.bin'), 'x')
    const forced = await citadelJson(['backup', 'create', '--force'], roots.env)
    expect(forced.code, forced.stderr).toBe(0)
    expect(forced.doc.tasks[0].warnings).toEqual([expect.stringMatching(/holds 1 file, 1 B; its previous backup .+ a fall of \d+%, more than BACKUP_MAX_SHRINK=0.5 allows: backed up anyway \(--force\)$/)])
  })

  it('an empty backup, even verified, never counts as the last good one: cleanup keeps the real backup', async () => {
    const roots = await setUpServer({ BACKUP_KEEP_MIN: '1' })
    const real = backdate(roots, await backUp(roots, { 'm/a.bin': 'alpha' }), 60)
    expect((await citadelJson(['backup', 'verify', real, '--sample', '1'], roots.env)).code).toBe(0)
    // The model disk is gone: the operator forces a backup of the empty mount point, which verifies fine.
    rmSync(path.join(roots.active, 'm'), { recursive: true })
    const empty = (await citadelJson(['backup', 'create', '--force'], roots.env)).doc.tasks[0].data.backup
    expect((await citadelJson(['backup', 'verify', empty, '--sample', '1'], roots.env)).code).toBe(0)

    const cleanup = await citadelJson(['backup', 'cleanup'], roots.env)
    expect(cleanup.code, cleanup.stderr).toBe(0)
    expect(cleanup.doc.tasks[0].data.backups.map((b: any) => [b.name, b.verdict])).toEqual([[real, 'keep: newest 1'], [empty, 'keep: latest']])
    expect(existsSync(path.join(storeOf(roots), real, 'data', 'm', 'a.bin'))).toBe(true)
  })
})
