// An incremental links in-process only what its parent provably holds as the source is now, and hands rsync
// everything else: files changed in place with size and mtime kept, replaced, turned into links or
// directories, hard-link groups, and runs killed while linking.
import { spawnSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { chmodSync, linkSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, renameSync, statSync, symlinkSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { describe, expect, it } from 'vitest'
import { setUpServer, storeOf, writeFile } from '../backup-helpers.ts'
import { citadelJson, start, type Roots } from '../helpers.ts'

const sha256 = (content: string | Buffer) => createHash('sha256').update(content).digest('hex')
const dataOf = (roots: Roots, name: string) => path.join(storeOf(roots), name, 'data')
const inode = (file: string) => lstatSync(file).ino
const backups = (roots: Roots) => readdirSync(storeOf(roots)).filter((n) => n.startsWith('backup_')).sort()

/** The stock `sha256sum -c` on a backup's manifest, from inside its data/. */
const sha256sumCheck = (roots: Roots, name: string) =>
  spawnSync('sha256sum', ['-c', '--strict', '--quiet', '../SHA256SUMS'], { cwd: dataOf(roots, name), encoding: 'utf8' })

async function create(roots: Roots) {
  const result = await citadelJson(['backup', 'create'], roots.env)
  expect(result.code, result.stdout + result.stderr).toBe(0)
  return result.doc.tasks[0].data as { backup: string; type: string; hashed_bytes: number; reused_hashes: number; copied_bytes: number }
}

const MTIME = new Date('2024-03-01T12:00:00Z')

/** The file's content replaced, with its size, mode and mtime (MTIME) as they were: only its ctime tells. */
function rewriteKeepingSizeAndMtime(file: string, content: Buffer) {
  const before = statSync(file)
  expect(content.length).toBe(before.size)
  writeFileSync(file, content)
  utimesSync(file, MTIME, MTIME)
  expect(statSync(file).mtimeMs).toBe(before.mtimeMs)
}

describe('an incremental links only what its parent provably holds', () => {
  it("links files at the top of the source as well as below it, and gives the copy the root's mode and times", async () => {
    const roots = await setUpServer()
    writeFile(path.join(roots.active, 'top.bin'), randomBytes(4096))
    writeFile(path.join(roots.active, 'm', 'deep.bin'), randomBytes(4096))
    chmodSync(roots.active, 0o750)
    utimesSync(roots.active, MTIME, MTIME)
    const full = (await create(roots)).backup
    const incr = await create(roots)
    // rsync 3.5 copies the files directly inside a listed '.', whatever else the list says: none may be copied.
    for (const rel of ['top.bin', 'm/deep.bin']) expect(inode(path.join(dataOf(roots, incr.backup), rel)), rel).toBe(inode(path.join(dataOf(roots, full), rel)))
    expect(incr.copied_bytes).toBe(0)
    const root = statSync(dataOf(roots, incr.backup))
    expect((root.mode & 0o7777).toString(8)).toBe('750')
    expect(root.mtimeMs).toBe(MTIME.getTime())
  })

  it('an untouched file is linked unread; one changed in place with size and mtime kept is hashed, found different and copied', async () => {
    const roots = await setUpServer()
    const old = randomBytes(64 << 10)
    writeFile(path.join(roots.active, 'm', 'steady.bin'), randomBytes(64 << 10))
    writeFile(path.join(roots.active, 'm', 'edited.bin'), old)
    utimesSync(path.join(roots.active, 'm', 'edited.bin'), MTIME, MTIME)
    const full = (await create(roots)).backup

    const now = randomBytes(64 << 10)
    rewriteKeepingSizeAndMtime(path.join(roots.active, 'm', 'edited.bin'), now)
    const incr = await create(roots)
    expect(incr.type).toBe('incremental')
    // rsync's quick check alone would have linked it to the old content; the changed ctime sends it to be hashed.
    expect(readFileSync(path.join(dataOf(roots, incr.backup), 'm', 'edited.bin')).equals(now)).toBe(true)
    expect(inode(path.join(dataOf(roots, incr.backup), 'm', 'edited.bin'))).not.toBe(inode(path.join(dataOf(roots, full), 'm', 'edited.bin')))
    expect(readFileSync(path.join(dataOf(roots, full), 'm', 'edited.bin')).equals(old)).toBe(true)
    expect(inode(path.join(dataOf(roots, incr.backup), 'm', 'steady.bin'))).toBe(inode(path.join(dataOf(roots, full), 'm', 'steady.bin')))
    // Read once to compare with the parent, once while copied; the steady file not at all.
    expect(incr.hashed_bytes).toBe(2 * now.length)
    expect(sha256sumCheck(roots, incr.backup).status).toBe(0)
    expect(readFileSync(path.join(storeOf(roots), incr.backup, 'SHA256SUMS'), 'utf8')).toContain(`${sha256(now)}  m/edited.bin\n`)
  })

  it('a file touched without a change of content (chmod and back) is hashed, found equal and linked', async () => {
    const roots = await setUpServer()
    const file = path.join(roots.active, 'm', 'a.bin')
    writeFile(file, randomBytes(32 << 10))
    const full = (await create(roots)).backup
    const mode = statSync(file).mode & 0o7777
    chmodSync(file, 0o600)
    chmodSync(file, mode)
    const incr = await create(roots)
    expect(inode(path.join(dataOf(roots, incr.backup), 'm', 'a.bin'))).toBe(inode(path.join(dataOf(roots, full), 'm', 'a.bin')))
    expect(incr.hashed_bytes).toBe(32 << 10)
    expect(incr.copied_bytes).toBe(0)
  })

  it('a file replaced by another (a new inode) with the same size and mtime is copied, never linked', async () => {
    const roots = await setUpServer()
    const file = path.join(roots.active, 'm', 'a.bin')
    writeFile(file, randomBytes(4096))
    const full = (await create(roots)).backup
    const st = statSync(file)
    const replacement = randomBytes(4096)
    writeFileSync(file + '.new', replacement)
    utimesSync(file + '.new', st.atime, st.mtime)
    expect(statSync(file + '.new').mtimeMs).toBeCloseTo(st.mtimeMs, -3)
    renameSync(file + '.new', file)
    expect(statSync(file).ino).not.toBe(st.ino)
    const incr = await create(roots)
    const copy = path.join(dataOf(roots, incr.backup), 'm', 'a.bin')
    expect(readFileSync(copy).equals(replacement)).toBe(true)
    expect(inode(copy)).not.toBe(inode(path.join(dataOf(roots, full), 'm', 'a.bin')))
    expect(sha256sumCheck(roots, incr.backup).status).toBe(0)
  })

  it('a file turned into a symlink or into a directory is backed up as what it is now', async () => {
    const roots = await setUpServer()
    // Big enough that what turns into a link or a directory is no shrinking source.
    writeFile(path.join(roots.active, 'm', 'target.bin'), 'target'.repeat(100))
    writeFile(path.join(roots.active, 'm', 'becomes-link'), 'was a file')
    writeFile(path.join(roots.active, 'm', 'becomes-dir'), 'was a file')
    await create(roots)
    unlinkSync(path.join(roots.active, 'm', 'becomes-link'))
    symlinkSync('target.bin', path.join(roots.active, 'm', 'becomes-link'))
    unlinkSync(path.join(roots.active, 'm', 'becomes-dir'))
    writeFile(path.join(roots.active, 'm', 'becomes-dir', 'inside.bin'), 'inside')
    const incr = await create(roots)
    const data = dataOf(roots, incr.backup)
    expect(readlinkSync(path.join(data, 'm', 'becomes-link'))).toBe('target.bin')
    expect(lstatSync(path.join(data, 'm', 'becomes-dir')).isDirectory()).toBe(true)
    expect(readFileSync(path.join(data, 'm', 'becomes-dir', 'inside.bin'), 'utf8')).toBe('inside')
    const catalog = JSON.parse(readFileSync(path.join(storeOf(roots), incr.backup, 'files.json'), 'utf8'))
    expect(catalog).toMatchObject({ files: [['m/becomes-dir/inside.bin', 6], ['m/target.bin', 600]], symlinks: [['m/becomes-link', 'target.bin']] })
    expect(sha256sumCheck(roots, incr.backup).status).toBe(0)
    expect((await citadelJson(['backup', 'verify', '--sample', '1'], roots.env)).code).toBe(0)
  })

  it('keeps directories, their modes and times, and empty ones, as rsync -a does', async () => {
    const roots = await setUpServer()
    writeFile(path.join(roots.active, 'm', 'sub', 'a.bin'), 'a')
    mkdirSync(path.join(roots.active, 'm', 'empty'))
    chmodSync(path.join(roots.active, 'm', 'sub'), 0o750)
    const when = new Date('2024-03-01T12:00:00Z')
    for (const dir of ['m/sub', 'm/empty', 'm']) utimesSync(path.join(roots.active, dir), when, when)
    const full = (await create(roots)).backup
    const incr = (await create(roots)).backup
    expect(inode(path.join(dataOf(roots, incr), 'm', 'sub', 'a.bin'))).toBe(inode(path.join(dataOf(roots, full), 'm', 'sub', 'a.bin')))
    for (const dir of ['m/sub', 'm/empty', 'm']) {
      const copy = lstatSync(path.join(dataOf(roots, incr), dir))
      const source = lstatSync(path.join(roots.active, dir))
      expect([dir, copy.mode, copy.mtimeMs]).toEqual([dir, source.mode, source.mtimeMs])
    }
  })

  it('links files and directories whose names are not UTF-8, by their very bytes', async () => {
    const roots = await setUpServer()
    const dir = Buffer.concat([Buffer.from(roots.active + '/caf'), Buffer.of(0xe9)])
    const file = Buffer.concat([dir, Buffer.from('/bad-'), Buffer.of(0xff), Buffer.from('.bin')])
    mkdirSync(dir)
    writeFileSync(file, randomBytes(1024))
    const full = (await create(roots)).backup
    const incr = await create(roots)
    const inBackup = (name: string) => Buffer.concat([Buffer.from(storeOf(roots) + '/' + name + '/data/caf'), Buffer.of(0xe9), Buffer.from('/bad-'), Buffer.of(0xff), Buffer.from('.bin')])
    expect(lstatSync(inBackup(incr.backup)).ino).toBe(lstatSync(inBackup(full)).ino)
    expect(incr.hashed_bytes).toBe(0)
    expect(sha256sumCheck(roots, incr.backup).status).toBe(0)
  })

  it('keeps a hard-link group one inode, linked to the parent while whole, copied together once it gains a name', async () => {
    const roots = await setUpServer()
    writeFile(path.join(roots.active, 'm', 'a.bin'), randomBytes(4096))
    linkSync(path.join(roots.active, 'm', 'a.bin'), path.join(roots.active, 'm', 'b.bin'))
    const full = (await create(roots)).backup
    const second = (await create(roots)).backup
    const inodes = (name: string, ...rels: string[]) => rels.map((rel) => inode(path.join(dataOf(roots, name), 'm', rel)))
    expect(inodes(second, 'a.bin', 'b.bin')).toEqual(inodes(full, 'a.bin', 'a.bin'))

    linkSync(path.join(roots.active, 'm', 'a.bin'), path.join(roots.active, 'm', 'c.bin'))
    const third = (await create(roots)).backup
    const [a, b, c] = inodes(third, 'a.bin', 'b.bin', 'c.bin')
    expect([b, c]).toEqual([a, a])
    expect(sha256sumCheck(roots, third).status).toBe(0)
  })

  it('killed at random moments while linking thousands of files, each rerun at once publishes a complete backup and the parent stays whole', async () => {
    const roots = await setUpServer()
    for (let i = 0; i < 3000; i++) writeFile(path.join(roots.active, 'many', `d${i % 30}`, `f${i}.bin`), randomBytes(256))
    const full = (await create(roots)).backup
    const t0 = Date.now()
    await create(roots)
    const duration = Date.now() - t0
    for (let trial = 0; trial < 10; trial++) {
      // A few files changed each time, so every run also has something for rsync to copy.
      for (let k = 0; k < 5; k++) writeFileSync(path.join(roots.active, 'many', `d${k}`, `f${trial * 30 + k}.bin`), randomBytes(256))
      const victim = start(['backup', 'create'], roots.env)
      await sleep(Math.random() * duration)
      victim.child.kill('SIGKILL')
      await victim.done
      const rerun = await create(roots)
      expect(readdirSync(storeOf(roots)).filter((n) => n.endsWith('.partial'))).toEqual([])
      const catalog = JSON.parse(readFileSync(path.join(storeOf(roots), rerun.backup, 'files.json'), 'utf8'))
      expect(catalog.files).toHaveLength(3000)
      expect(sha256sumCheck(roots, rerun.backup).status).toBe(0)
    }
    expect(backups(roots).length).toBeGreaterThan(2)
    const verify = await citadelJson(['backup', 'verify', full, '--sample', '1'], roots.env)
    expect(verify.code, JSON.stringify(verify.doc.tasks[0].data)).toBe(0)
  }, 300_000)
})
