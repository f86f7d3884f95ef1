// backup verify --repair heals a backup whose files rotted: one good inode for every backup that shared the
// rotten one, from a copy that hashes as the manifest says, never written in place.
import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { backUp, setUpServer, storeOf, writeFile } from '../backup-helpers.ts'
import { citadel, citadelJson, snapshot, type Roots } from '../helpers.ts'
import { sshdMissing, startSshd } from '../ssh-helpers.ts'

const GOOD = 'the weights as they should be '.repeat(100)
const sha256 = (content: string | Buffer) => createHash('sha256').update(content).digest('hex')
const readJson = (file: string) => JSON.parse(readFileSync(file, 'utf8'))
const backupDir = (roots: Roots, name: string) => path.join(storeOf(roots), name)
const fileOf = (roots: Roots, name: string, rel = 'm/a.bin') => path.join(backupDir(roots, name), 'data', rel)
const sha256sumCheck = (roots: Roots, name: string) => spawnSync('sha256sum', ['-c', '--strict', '--quiet', '../SHA256SUMS'], { cwd: path.join(backupDir(roots, name), 'data'), encoding: 'utf8' })

/** Bit rot on the backup disk: one byte flipped, size, mode and mtime kept, so only a hash can tell. */
function rot(file: string) {
  const st = statSync(file)
  const bytes = readFileSync(file)
  bytes[7] = bytes[7]! ^ 0x20
  chmodSync(file, 0o644)
  writeFileSync(file, bytes)
  chmodSync(file, st.mode & 0o7777)
  utimesSync(file, st.atime, st.mtime)
}

/** Every backup's data/, entry by entry: what a repair must not touch when it heals nothing. */
const dataOf = (roots: Roots, names: string[]) => names.map((name) => snapshot(path.join(backupDir(roots, name), 'data')))

/** A full backup of a.bin and b.bin, and two incrementals that hard-link the same a.bin. */
async function sharedChain(roots: Roots): Promise<string[]> {
  const full = await backUp(roots, { 'm/a.bin': GOOD, 'm/b.bin': 'bravo' })
  const first = await backUp(roots, { 'm/c.bin': 'charlie' })
  const second = await backUp(roots, { 'm/d.bin': 'delta' })
  const names = [full, first, second]
  expect(new Set(names.map((n) => statSync(fileOf(roots, n)).ino)).size).toBe(1)
  return names
}

describe('backup verify --repair', () => {
  it('heals a rotten file shared by a full backup and two incrementals from the active copy: one new inode, mode and mtime kept', async () => {
    const roots = await setUpServer()
    const names = await sharedChain(roots)
    const rotten = statSync(fileOf(roots, names[0]!))
    rot(fileOf(roots, names[0]!))
    expect(sha256sumCheck(roots, names[0]!).status).not.toBe(0)
    const active = snapshot(roots.active)

    const healed = await citadelJson(['backup', 'verify', '--repair', '--sample', '1'], roots.env)
    expect(healed.code, healed.stdout + healed.stderr).toBe(0)
    const task = healed.doc.tasks[0]
    expect(task.status).toBe('changed')
    expect(task.msg).toMatch(new RegExp(`^${names[2]}: 4 files checked, 4 hashed .*: 1 problem found; healed 1 file in 3 backups from the active models$`))
    expect(task.changes.map((c: any) => [c.action, c.path]).sort()).toEqual(names.map((n) => ['heal backup file', fileOf(roots, n)]).sort())
    expect(task.data.repair.healed).toEqual([{ path: 'm/a.bin', from: 'the active models', copies: [`${names[2]}/m/a.bin`, ...names.slice(0, 2).map((n) => `${n}/m/a.bin`)] }])
    expect(task.data.repair.unhealed).toEqual([])

    for (const name of names) expect(sha256sumCheck(roots, name).status, name).toBe(0)
    const now = names.map((n) => statSync(fileOf(roots, n)))
    expect(new Set(now.map((st) => st.ino)).size).toBe(1)
    expect(now[0]!.ino).not.toBe(rotten.ino)
    expect(now[0]!.nlink).toBe(3)
    expect(now[0]!.mode).toBe(rotten.mode)
    expect(Math.round(now[0]!.mtimeMs)).toBe(Math.round(rotten.mtimeMs))
    expect(sha256(readFileSync(fileOf(roots, names[0]!)))).toBe(sha256(GOOD))
    expect(snapshot(roots.active)).toEqual(active)
    // The record says what was found and what was healed; the healed file counts as verified now.
    const record = readJson(path.join(backupDir(roots, names[2]!), 'backup.json')).verifications.at(-1)
    expect(record).toMatchObject({ ok: true, problems: [{ kind: 'mismatch', path: 'm/a.bin' }], healed: [{ path: 'm/a.bin', from: 'the active models' }] })
    expect(readJson(path.join(backupDir(roots, names[2]!), 'verify-state.json'))['m/a.bin'] > record.at).toBe(true)

    const again = await citadelJson(['backup', 'verify', '--repair', '--sample', '1'], roots.env)
    expect(again.code).toBe(0)
    expect(again.doc.tasks[0].status).toBe('ok')
    expect(again.doc.tasks[0].changes).toEqual([])
  })

  it('takes a separate good copy from another backup when the active copy changed, and says so', async () => {
    const roots = await setUpServer()
    const names = await sharedChain(roots)
    const separate = await citadelJson(['backup', 'create', '--type', 'full'], roots.env)
    expect(separate.code, separate.stdout + separate.stderr).toBe(0)
    const fourth = separate.doc.tasks[0].data.backup
    const goodIno = statSync(fileOf(roots, fourth)).ino
    expect(goodIno).not.toBe(statSync(fileOf(roots, names[0]!)).ino)
    writeFile(path.join(roots.active, 'm', 'a.bin'), 'weights retrained since')
    rot(fileOf(roots, names[0]!))

    const healed = await citadelJson(['backup', 'verify', names[1]!, '--repair', '--sample', '1'], roots.env)
    expect(healed.code, healed.stdout + healed.stderr).toBe(0)
    expect(healed.doc.tasks[0].msg).toMatch(new RegExp(`: 1 problem found; healed 1 file in 3 backups from ${fourth}$`))
    for (const name of [...names, fourth]) expect(sha256sumCheck(roots, name).status, name).toBe(0)
    const inodes = names.map((n) => statSync(fileOf(roots, n)).ino)
    expect(new Set(inodes).size).toBe(1)
    // Written once as a copy of its own: the good backup's inode stays its own.
    expect(inodes[0]).not.toBe(goodIno)
    expect(statSync(fileOf(roots, fourth)).nlink).toBe(1)
    expect(readFileSync(path.join(roots.active, 'm', 'a.bin'), 'utf8')).toBe('weights retrained since')
  })

  it('fails with exit 2 naming a file no good copy exists of, and changes nothing under data/', async () => {
    const roots = await setUpServer()
    const names = await sharedChain(roots)
    writeFile(path.join(roots.active, 'm', 'a.bin'), 'weights retrained since')
    rot(fileOf(roots, names[0]!))
    const before = dataOf(roots, names)

    const result = await citadelJson(['backup', 'verify', '--repair', '--sample', '1'], roots.env)
    expect(result.code).toBe(2)
    const task = result.doc.tasks[0]
    expect(task.status).toBe('failed')
    expect(task.msg).toContain(`1 problem: m/a.bin: mismatch; could not heal m/a.bin (no good copy anywhere: the active copy ${path.join(roots.active, 'm', 'a.bin')} differs; no other local backup holds a separate good copy; BACKUP_REMOTE is not set)`)
    expect(task.data.repair).toEqual({ healed: [], unhealed: [{ path: 'm/a.bin', why: expect.stringMatching(/^no good copy anywhere: /) }], leftovers: [] })
    expect(task.changes).toEqual([])
    expect(dataOf(roots, names)).toEqual(before)
    const record = readJson(path.join(backupDir(roots, names[2]!), 'backup.json')).verifications.at(-1)
    expect(record.ok).toBe(false)
    expect(record.healed).toBeUndefined()
  })

  it('puts back a file missing from a backup, by a link that never replaces anything', async () => {
    const roots = await setUpServer()
    const names = await sharedChain(roots)
    const gone = fileOf(roots, names[2]!, 'm/b.bin')
    rmSync(gone)
    const result = await citadelJson(['backup', 'verify', '--repair', '--sample', '1'], roots.env)
    expect(result.code, result.stdout + result.stderr).toBe(0)
    expect(result.doc.tasks[0].msg).toMatch(/: 1 problem found; healed 1 file in 1 backup from the active models$/)
    expect(result.doc.tasks[0].data.verification.problems).toMatchObject([{ kind: 'missing', path: 'm/b.bin' }])
    expect(sha256sumCheck(roots, names[2]!).status).toBe(0)
    expect(statSync(gone).mode).toBe(statSync(fileOf(roots, names[0]!, 'm/b.bin')).mode)
  })

  it('--check names what it would heal and leaves the store byte for byte as it was', async () => {
    const roots = await setUpServer()
    const names = await sharedChain(roots)
    rot(fileOf(roots, names[0]!))
    const before = snapshot(storeOf(roots))

    const result = await citadelJson(['backup', 'verify', '--repair', '--sample', '1', '--check'], roots.env)
    expect(result.code, result.stdout + result.stderr).toBe(0)
    const task = result.doc.tasks[0]
    expect(task.msg).toMatch(/: 1 problem found; would heal 1 file in 3 backups from the active models$/)
    expect(task.changes.map((c: any) => c.path).sort()).toEqual(names.map((n) => fileOf(roots, n)).sort())
    expect(snapshot(storeOf(roots))).toEqual(before)
    expect(sha256sumCheck(roots, names[0]!).status).not.toBe(0)
  })

  it('removes what a killed repair left beside a backup file before it verifies', async () => {
    const roots = await setUpServer()
    const name = await backUp(roots, { 'm/a.bin': GOOD, 'm/b.bin': 'bravo' })
    const staged = path.join(backupDir(roots, name), 'data', 'm', '.a.bin.citadel-heal-4242-0badcafe')
    const fetched = path.join(backupDir(roots, name), 'data', 'm', '.b.bin.citadel-fetch-4242-feedf00d')
    writeFileSync(staged, GOOD.slice(0, 100))
    mkdirSync(path.join(fetched, 'm'), { recursive: true })
    writeFileSync(path.join(fetched, 'm', 'b.bin'), 'bra')
    // Without --repair they are strays of the backup.
    const plain = await citadelJson(['backup', 'verify', '--sample', '1'], roots.env)
    expect(plain.code).toBe(2)
    expect(plain.doc.tasks[0].data.verification.problems.map((p: any) => p.kind)).toEqual(['extra', 'extra'])

    const result = await citadelJson(['backup', 'verify', '--repair', '--sample', '1'], roots.env)
    expect(result.code, result.stdout + result.stderr).toBe(0)
    const task = result.doc.tasks[0]
    expect(task.changes.map((c: any) => [c.action, c.path])).toEqual([['remove interrupted heal', fetched], ['remove interrupted heal', staged]])
    expect(task.data.verification.problems).toEqual([])
    expect(task.data.repair.leftovers).toEqual([fetched, staged])
    expect(existsSync(staged) || existsSync(fetched)).toBe(false)
    expect(sha256sumCheck(roots, name).status).toBe(0)
  })

  it('--repair with --remote is refused by the arguments, in one line', async () => {
    const roots = await setUpServer()
    const result = await citadel(['backup', 'verify', '--remote', '--repair'], roots.env)
    expect(result.code).toBe(4)
    expect(result.stderr).toBe('citadel: --repair is not valid here: not with --remote: only a backup on the backup disk can be healed; verify it with --remote, heal the local one\n')
  })
})

describe.skipIf(sshdMissing)('backup verify --repair with BACKUP_REMOTE', () => {
  it('fetches a good copy from the remote backup when no local one is left, hashing it here before use', async () => {
    const roots = await setUpServer()
    const remoteDir = path.join(roots.base, 'remote')
    mkdirSync(remoteDir)
    Object.assign(roots.env, (await startSshd(remoteDir)).env)
    const names = await sharedChain(roots)
    const sent = await citadelJson(['backup', 'create', '--remote', names[0]!], roots.env)
    expect(sent.code, sent.stdout + sent.stderr).toBe(0)
    writeFile(path.join(roots.active, 'm', 'a.bin'), 'weights retrained since')
    const rotten = statSync(fileOf(roots, names[0]!))
    rot(fileOf(roots, names[0]!))
    const remoteCopy = snapshot(path.join(remoteDir, 'models', names[0]!))

    const healed = await citadelJson(['backup', 'verify', names[1]!, '--repair', '--sample', '1'], roots.env)
    expect(healed.code, healed.stdout + healed.stderr).toBe(0)
    const task = healed.doc.tasks[0]
    expect(task.msg).toMatch(new RegExp(`: 1 problem found; healed 1 file in 3 backups from [^ ]+:${names[0]}$`))
    for (const name of names) expect(sha256sumCheck(roots, name).status, name).toBe(0)
    const now = statSync(fileOf(roots, names[0]!))
    expect(new Set(names.map((n) => statSync(fileOf(roots, n)).ino))).toEqual(new Set([now.ino]))
    expect(now.ino).not.toBe(rotten.ino)
    expect([now.mode, now.uid, Math.round(now.mtimeMs)]).toEqual([rotten.mode, rotten.uid, Math.round(rotten.mtimeMs)])
    // Nothing of the fetch is left beside the file, and the remote copy is as it was.
    expect(readdirSync(path.dirname(fileOf(roots, names[0]!))).sort()).toEqual(['a.bin', 'b.bin'])
    expect(snapshot(path.join(remoteDir, 'models', names[0]!))).toEqual(remoteCopy)
  })
})
