// What is damaged is reported as damaged, and bad bytes do not spread: damaged lists, a full backup disk,
// backups from the future, files that change while copied, and files a verification found bad.
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { chmodSync, cpSync, readdirSync, renameSync, readFileSync, statSync, truncateSync, utimesSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { backupName } from '../../lib/backup/store.ts'
import { backUp, pointLatest, setUpServer, storeOf, writeFile } from '../backup-helpers.ts'
import { citadelJson, makeRoots, setUp, snapshot, type Roots } from '../helpers.ts'

const CALM = { STORAGE_MONITOR_DISK_USAGE_WARNING: '0.98', STORAGE_MONITOR_DISK_USAGE_CRITICAL: '0.99', STORAGE_MONITOR_INODE_USAGE_WARNING: '0.98', STORAGE_MONITOR_INODE_USAGE_CRITICAL: '0.99' }
const sha256 = (content: string | Buffer) => createHash('sha256').update(content).digest('hex')
const readJson = (file: string) => JSON.parse(readFileSync(file, 'utf8'))
const backupDir = (roots: Roots, name: string) => path.join(storeOf(roots), name)

/** The stock `sha256sum -c` on a backup's manifest, from inside its data/. */
const sha256sumCheck = (dir: string) => spawnSync('sha256sum', ['-c', '--strict', '--quiet', '../SHA256SUMS'], { cwd: path.join(dir, 'data'), encoding: 'utf8' })

describe('damaged lists are reported as damaged', () => {
  it('a truncated backup.json of latest fails verify, naming the backup and the file, and is critical in health-check', async () => {
    const roots = await setUpServer(CALM)
    await backUp(roots, { 'm/a.bin': 'alpha' })
    const newest = await backUp(roots, { 'm/b.bin': 'bravo' })
    const meta = path.join(backupDir(roots, newest), 'backup.json')
    chmodSync(meta, 0o644)
    truncateSync(meta, 50)

    const verify = await citadelJson(['backup', 'verify'], roots.env)
    expect(verify.code).toBe(2)
    expect(verify.doc.tasks[0].status).toBe('failed')
    expect(verify.doc.tasks[0].msg).toContain(`latest points at ${newest}, which is damaged`)
    expect(verify.doc.tasks[0].msg).toContain(`${meta} is not valid JSON`)

    const health = await citadelJson(['health-check'], roots.env)
    expect(health.code).toBe(2)
    expect(health.doc.problems).toContainEqual(expect.objectContaining({ severity: 'critical', key: 'backups:latest', message: expect.stringContaining(`latest points at ${newest}, which is damaged`) }))
  })

  it('a backup.json of the wrong shape is one line naming the file and the field, never counted', async () => {
    const roots = await setUpServer()
    const name = await backUp(roots, { 'a.bin': 'alpha' })
    const meta = path.join(backupDir(roots, name), 'backup.json')
    const doc = readJson(meta)
    chmodSync(meta, 0o644)
    writeFileSync(meta, JSON.stringify({ ...doc, files: '1' }))
    const status = await citadelJson(['backup', 'status'], roots.env)
    expect(status.doc.tasks[0].data.damaged).toEqual([{ name, reason: `backup.json unreadable: ${meta} is not what citadel wrote at files: Invalid input: expected number, received string` }])
  })

  it('a truncated files.json fails verify naming the file, and the failed verification is recorded', async () => {
    const roots = await setUpServer()
    const name = await backUp(roots, { 'm/a.bin': 'alpha', 'm/b.bin': 'bravo' })
    const catalog = path.join(backupDir(roots, name), 'files.json')
    chmodSync(catalog, 0o644)
    truncateSync(catalog, 50)

    const verify = await citadelJson(['backup', 'verify', '--sample', '1'], roots.env)
    expect(verify.code).toBe(2)
    expect(verify.doc.tasks[0].msg).toMatch(new RegExp(`^${name} cannot be verified: ${catalog} is not valid JSON \\(.+\\): it was cut short or edited$`))
    const records = readJson(path.join(backupDir(roots, name), 'backup.json')).verifications
    expect(records).toHaveLength(1)
    expect(records[0]).toMatchObject({ ok: false, problems: [{ kind: 'list', path: 'files.json' }] })
  })

  it('a verify-state.json of the wrong shape is a warning naming the file, and the verify goes on', async () => {
    const roots = await setUpServer()
    const name = await backUp(roots, { 'a.bin': 'alpha' })
    const state = path.join(backupDir(roots, name), 'verify-state.json')
    writeFileSync(state, JSON.stringify({ 'a.bin': 42 }))
    const verify = await citadelJson(['backup', 'verify', '--sample', '1'], roots.env)
    expect(verify.code).toBe(0)
    expect(verify.doc.tasks[0].warnings).toEqual([expect.stringMatching(new RegExp(`^${state} is not what citadel wrote at a\\.bin: .*: starting over as if no file had been verified$`))])
    expect(readJson(state)).toEqual({ 'a.bin': expect.any(String) })
  })
})

describe('bad bytes do not spread', () => {
  it('an incremental copies afresh from the source a file the last verification of its parent found bad, and says so', async () => {
    const roots = await setUpServer()
    const good = 'the weights as they should be '.repeat(100)
    const parent = await backUp(roots, { 'm/a.bin': good, 'm/b.bin': 'bravo' })
    // Bit rot in the backup: same size, same mtime and mode, so rsync's quick check still matches the source.
    const rotten = path.join(backupDir(roots, parent), 'data', 'm', 'a.bin')
    const st = statSync(rotten)
    chmodSync(rotten, 0o644)
    writeFileSync(rotten, good.replace('weights', 'weighTs'))
    chmodSync(rotten, st.mode & 0o7777)
    utimesSync(rotten, st.atime, st.mtime)
    const verify = await citadelJson(['backup', 'verify', '--sample', '1'], roots.env)
    expect(verify.code).toBe(2)
    expect(verify.doc.tasks[0].data.verification.problems).toMatchObject([{ kind: 'mismatch', path: 'm/a.bin' }])

    const next = await citadelJson(['backup', 'create'], roots.env)
    expect(next.code, next.stdout + next.stderr).toBe(0)
    const task = next.doc.tasks[0]
    expect(task.data).toMatchObject({ type: 'incremental', parent, fresh: ['m/a.bin'] })
    expect(task.warnings).toContain(`1 file the last verification of ${parent} found bad copied afresh from the source: m/a.bin`)
    expect(task.data.copied_bytes).toBeGreaterThanOrEqual(good.length)
    const dir = backupDir(roots, task.data.backup)
    const copy = path.join(dir, 'data', 'm', 'a.bin')
    expect(statSync(copy).ino).not.toBe(statSync(rotten).ino)
    expect(sha256(readFileSync(copy))).toBe(sha256(good))
    // What was not found bad is still shared with the parent.
    expect(statSync(path.join(dir, 'data', 'm', 'b.bin')).ino).toBe(statSync(path.join(backupDir(roots, parent), 'data', 'm', 'b.bin')).ino)
    expect(sha256sumCheck(dir).status).toBe(0)
    expect((await citadelJson(['backup', 'verify', '--sample', '1'], roots.env)).code).toBe(0)

    // Once a later verification of the parent hashes it good again, it is shared again.
    chmodSync(rotten, 0o644)
    writeFileSync(rotten, good)
    chmodSync(rotten, st.mode & 0o7777)
    utimesSync(rotten, st.atime, st.mtime)
    expect((await citadelJson(['backup', 'verify', parent, '--sample', '1'], roots.env)).code).toBe(0)
    const { planCopy } = await import('../../lib/backup/build.ts')
    expect(planCopy(roots.active, backupDir(roots, parent)).fresh).toEqual([])
  })
})

describe('a file that changes while it is backed up', () => {
  it('is a warning in the recap and in backup.json, and the manifest matches the copy', async () => {
    const roots = await setUpServer()
    writeFile(path.join(roots.active, 'm', 'steady.bin'), 'steady')
    const log = path.join(roots.active, 'm', 'growing.log')
    writeFile(log, 'start\n')
    // A real writer, appending all through the backup.
    const writer = spawn('bash', ['-c', 'while :; do echo more >> "$1"; sleep 0.002; done', 'bash', log], { stdio: 'ignore' })
    try {
      const result = await citadelJson(['backup', 'create'], roots.env)
      expect(result.code, result.stdout + result.stderr).toBe(0)
      const task = result.doc.tasks[0]
      expect(task.warnings).toContainEqual(expect.stringMatching(/^1 file changed while being copied, so the backup may hold a mix of old and new content: m\/growing\.log; back up again once nothing writes to them$/))
      const dir = backupDir(roots, task.data.backup)
      expect(readJson(path.join(dir, 'backup.json')).changed_during_copy).toEqual(['m/growing.log'])
      expect(sha256sumCheck(dir).status).toBe(0)
    } finally {
      writer.kill()
    }
  })
})

describe('a backup dated in the future', () => {
  it('does not hide that the real newest backup is overdue, in health-check and backup status', async () => {
    const roots = await setUpServer(CALM)
    const made = await backUp(roots, { 'm/a.bin': 'alpha' })
    const DAY = 86_400_000
    const old = backupName(new Date(Date.now() - 10 * DAY), 'full')
    renameSync(backupDir(roots, made), backupDir(roots, old))
    // Made while the clock was a year ahead, say.
    const ahead = backupName(new Date(Date.now() + 365 * DAY), 'incremental')
    cpSync(backupDir(roots, old), backupDir(roots, ahead), { recursive: true, preserveTimestamps: true })
    pointLatest(roots, ahead)

    const message = `the newest backup, ${old}, is 10d 0h old (more than 8 days); ${ahead} is dated in the future (the clock was ahead?) and not counted`
    const health = await citadelJson(['health-check'], roots.env)
    expect(health.doc.problems).toContainEqual({ check: 'backups', severity: 'warning', key: 'backups:overdue', message })
    expect(health.code).toBe(1)
    const status = await citadelJson(['backup', 'status'], roots.env)
    expect(status.doc.tasks[0].warnings).toContain(message)
  })
})

const mounted: string[] = []
afterEach(() => {
  for (const dir of mounted.splice(0).reverse()) execFileSync('umount', [dir])
})
const asRoot = process.getuid?.() === 0
if (!asRoot) console.warn('backup-trust: the tests on a small backup disk need root to mount a tmpfs; skipped')

/** Set-up roots whose backup root is a fresh tmpfs mounted with `options`. */
async function smallBackupDisk(options: string) {
  const roots = makeRoots()
  execFileSync('mount', ['-t', 'tmpfs', '-o', `${options},mode=0755`, 'tmpfs', roots.backup])
  mounted.push(roots.backup)
  await setUp(roots)
  return roots
}

/** Fills `dir`'s filesystem to the last byte. */
function fill(dir: string) {
  for (const [i, size] of [4096, 1].entries()) {
    try {
      for (let n = 0; ; n++) writeFileSync(path.join(dir, `filler-${i}-${n}`), Buffer.alloc(size, 1))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err
    }
  }
}

describe.skipIf(!asRoot)('on a small backup disk (root: mounts a tmpfs)', () => {
  it('backup create refuses before copying when the disk has too few inodes, naming both figures', async () => {
    const roots = await smallBackupDisk('size=8m,nr_inodes=64')
    for (let i = 0; i < 100; i++) writeFile(path.join(roots.active, 'm', `tiny-${i}.bin`), `${i}`)
    // The store lock comes and goes in models/ and moves its mtime; every entry and every byte stays.
    const shape = () => ({ ...snapshot(roots.backup), models: 'dir' })
    const before = shape()
    const result = await citadelJson(['backup', 'create'], roots.env)
    expect(result.code).toBe(2)
    expect(result.doc.tasks[0].msg).toMatch(new RegExp(`^not enough space on ${roots.backup}: the backup needs (\\d+) inodes \\(100 files to copy, the rest directories, links and metadata\\), (\\d+) are free$`))
    const [, needed, free] = /needs (\d+) inodes.*, (\d+) are free/.exec(result.doc.tasks[0].msg)!.map(Number)
    expect(needed).toBeGreaterThan(free!)
    expect(shape()).toEqual(before)
  })

  it('a verify that hashed everything and then finds the backup disk full prints its result, then the error', async () => {
    const roots = await smallBackupDisk('size=8m')
    const name = await backUp(roots, { 'm/a.bin': 'alpha', 'm/b.bin': 'bravo' })
    const meta = path.join(backupDir(roots, name), 'backup.json')
    const recorded = readFileSync(meta, 'utf8')
    fill(roots.backup)
    const result = await citadelJson(['backup', 'verify', '--sample', '1'], roots.env)
    expect(result.code).toBe(2)
    const task = result.doc.tasks[0]
    expect(task.msg).toMatch(new RegExp(`^${name}: 2 files checked, 2 hashed \\(10 B, 100% of bytes\\): ok; this result was not recorded in ${name}: .*ENOSPC.*; the backup disk ${roots.backup} is full; free space there and verify again$`))
    expect(task.data.verification).toMatchObject({ ok: true, files_hashed: 2, problems: [] })
    expect(readFileSync(meta, 'utf8')).toBe(recorded)
    expect(readdirSync(backupDir(roots, name)).sort()).toEqual(['SHA256SUMS', 'backup.json', 'data', 'files.json'])
  })
})
