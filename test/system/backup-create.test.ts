// backup create, for real: rsync into temporary backup disks, manifests checked by the stock sha256sum.
import { execFileSync, spawnSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { chmodSync, existsSync, linkSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, symlinkSync, utimesSync, watch, writeFileSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, describe, expect, it } from 'vitest'
import { setUpServer, storeOf, writeFile } from '../backup-helpers.ts'
import { citadel, citadelJson, makeRoots, setUp, snapshot, start, type Roots } from '../helpers.ts'

const backups = (roots: Roots) => readdirSync(storeOf(roots)).filter((n) => n.startsWith('backup_')).sort()
const latest = (roots: Roots) => readlinkSync(path.join(storeOf(roots), 'latest'))
const meta = (roots: Roots, name: string) => JSON.parse(readFileSync(path.join(storeOf(roots), name, 'backup.json'), 'utf8'))
const duKiB = (dir: string) => Number(execFileSync('du', ['-sk', dir], { encoding: 'utf8' }).split('\t')[0])

/** Runs the stock `sha256sum -c` on a backup's manifest, from inside its data/. */
function sha256sumCheck(roots: Roots, name: string) {
  return spawnSync('sha256sum', ['-c', '--strict', '--quiet', '../SHA256SUMS'], { cwd: path.join(storeOf(roots), name, 'data'), encoding: 'utf8' })
}

/** Starts a create of six 48 MiB shards and resolves once rsync is writing the first of them. */
async function startCopying(roots: Roots) {
  for (let i = 0; i < 6; i++) writeFile(path.join(roots.active, 'm', `shard-${i}.safetensors`), randomBytes(48 << 20))
  const run = start(['backup', 'create'], roots.env)
  const partialData = () => readdirSync(storeOf(roots)).filter((n) => n.endsWith('.partial')).map((n) => path.join(storeOf(roots), n, 'data', 'm'))
  for (const until = Date.now() + 30_000; !partialData().some((d) => existsSync(d) && readdirSync(d).length > 0); await sleep(5))
    if (Date.now() > until) throw new Error('rsync never started copying')
  return run
}

async function create(roots: Roots, ...args: string[]) {
  const result = await citadelJson(['backup', 'create', ...args], roots.env)
  expect(result.code, result.stderr + JSON.stringify(result.doc.tasks)).toBe(0)
  return result.doc.tasks[0]
}

describe('backup create', () => {
  it('makes a full backup, then an incremental that hard-links what did not change', async () => {
    const roots = await setUpServer()
    const a = path.join(roots.active, 'm1', 'a.safetensors')
    writeFile(a, randomBytes(1 << 20))
    writeFile(path.join(roots.active, 'm1', 'config.json'), '{"v":1}\n')
    writeFile(path.join(roots.active, 'm1', 'sub', 'gone.txt'), 'deleted later\n')
    writeFile(path.join(roots.active, 'm2', 'w.safetensors'), randomBytes(2 << 20))

    const full = await create(roots)
    expect(full.data.type).toBe('full')
    const [fullName] = backups(roots)
    expect(latest(roots)).toBe(fullName)
    expect(meta(roots, fullName!)).toMatchObject({ type: 'full', files: 4, parent: null, rsync: { exit_code: 0 } })
    expect(sha256sumCheck(roots, fullName!).status).toBe(0)

    writeFile(path.join(roots.active, 'm1', 'config.json'), '{"v":2, "changed": true}\n')
    writeFile(path.join(roots.active, 'm2', 'new.bin'), randomBytes(100_000))
    rmSync(path.join(roots.active, 'm1', 'sub', 'gone.txt'))
    const before = duKiB(storeOf(roots))
    const incr = await create(roots)
    const grew = duKiB(storeOf(roots)) - before
    const incrName = backups(roots)[1]!
    expect(incr.data).toMatchObject({ type: 'incremental', parent: fullName, reused_hashes: 2 })
    expect(incr.data.hashed_bytes).toBe('{"v":2, "changed": true}\n'.length + 100_000)
    expect(latest(roots)).toBe(incrName)
    const inFull = (rel: string) => path.join(storeOf(roots), fullName!, 'data', rel)
    const inIncr = (rel: string) => path.join(storeOf(roots), incrName, 'data', rel)
    expect(lstatSync(inIncr('m1/a.safetensors')).ino).toBe(lstatSync(inFull('m1/a.safetensors')).ino)
    expect(lstatSync(inIncr('m2/w.safetensors')).ino).toBe(lstatSync(inFull('m2/w.safetensors')).ino)
    expect(readFileSync(inIncr('m1/config.json'), 'utf8')).toContain('changed')
    expect(readFileSync(inFull('m1/config.json'), 'utf8')).toBe('{"v":1}\n')
    expect(existsSync(inIncr('m2/new.bin'))).toBe(true)
    expect(existsSync(inIncr('m1/sub/gone.txt'))).toBe(false)
    expect(existsSync(inFull('m1/sub/gone.txt'))).toBe(true)
    // 3 MiB unchanged cost nothing: what grew is the new 100 kB file, the changed one, directories and lists.
    expect(grew).toBeLessThan(100 + 64)
    expect(sha256sumCheck(roots, incrName).status).toBe(0)
  })

  it('keeps modes, times and hard links inside the tree', async () => {
    const roots = await setUpServer()
    const weights = path.join(roots.active, 'm', 'weights.bin')
    writeFile(weights, randomBytes(10_000))
    chmodSync(weights, 0o640)
    utimesSync(weights, new Date('2025-01-02T03:04:05Z'), new Date('2025-01-02T03:04:05Z'))
    linkSync(weights, path.join(roots.active, 'm', 'same-weights.bin'))
    await create(roots)
    const data = path.join(storeOf(roots), backups(roots)[0]!, 'data', 'm')
    const copy = lstatSync(path.join(data, 'weights.bin'))
    expect(copy.mode & 0o7777).toBe(0o640)
    expect(copy.mtime.toISOString()).toBe('2025-01-02T03:04:05.000Z')
    expect(lstatSync(path.join(data, 'same-weights.bin')).ino).toBe(copy.ino)
    expect(copy.ino).not.toBe(lstatSync(weights).ino)
  })

  it('completes with a warning when source files vanish during the copy (rsync exit 24)', async () => {
    const roots = await setUpServer()
    writeFile(path.join(roots.active, 'm', 'aaa-big.safetensors'), randomBytes(256 << 20))
    const doomed = path.join(roots.active, 'm', 'zzz-vanishing.json')
    writeFile(doomed, '{"soon": "gone"}\n')
    // Once rsync is writing the big file its file list is made: the small file is in it and then gone.
    const { child, done } = start(['backup', 'create', '--json'], roots.env)
    const copying = () => readdirSync(storeOf(roots)).filter((n) => n.endsWith('.partial')).some((n) => {
      const dir = path.join(storeOf(roots), n, 'data', 'm')
      return existsSync(dir) && readdirSync(dir).some((f) => f.startsWith('.aaa-big'))
    })
    for (const until = Date.now() + 30_000; !copying(); await sleep(2)) if (Date.now() > until) throw new Error('rsync never started copying')
    rmSync(doomed)
    const result = await done
    expect(child.exitCode, result.stderr).toBe(0)
    const task = JSON.parse(result.stdout).tasks[0]
    expect(task.data.rsync_exit).toBe(24)
    expect(task.msg).toContain('some source files vanished during the copy')
    expect(task.warnings.join('\n')).toMatch(/file has vanished: .*zzz-vanishing\.json/)
    const [name] = backups(roots)
    expect(meta(roots, name!).rsync).toMatchObject({ exit_code: 24, warnings: [expect.stringMatching(/vanished/)] })
    expect(latest(roots)).toBe(name)
    expect(sha256sumCheck(roots, name!).status).toBe(0)
  })

  it('an unchanged incremental hashes nothing and shares its manifest with its parent', async () => {
    const roots = await setUpServer()
    for (let i = 0; i < 50; i++) writeFile(path.join(roots.active, 'm', `f${i}`), randomBytes(4096))
    await create(roots, '--type', 'full')
    const incr = await create(roots)
    expect(incr.data).toMatchObject({ type: 'incremental', hashed_bytes: 0, copied_bytes: 0, reused_hashes: 50 })
    const [a, b] = backups(roots)
    expect(lstatSync(path.join(storeOf(roots), b!, 'SHA256SUMS')).ino).toBe(lstatSync(path.join(storeOf(roots), a!, 'SHA256SUMS')).ino)
  })

  it('bases an incremental on the newest complete backup when latest points at something else, and repairs latest', async () => {
    const roots = await setUpServer()
    writeFile(path.join(roots.active, 'm', 'w.bin'), randomBytes(10_000))
    const full = (await create(roots)).data.backup
    rmSync(path.join(storeOf(roots), 'latest'))
    symlinkSync('backup_20200101_000000_full', path.join(storeOf(roots), 'latest'))
    const incr = await create(roots)
    expect(incr.data).toMatchObject({ type: 'incremental', parent: full, hashed_bytes: 0 })
    expect(latest(roots)).toBe(incr.data.backup)
  })

  it('writes a manifest the stock sha256sum -c accepts for hostile file names', async () => {
    const roots = await setUpServer()
    const names = ['with space.bin', `quote's "double".json`, 'back\\slash.txt', 'new\nline.txt', 'modèle–ü 漢字 🚀.safetensors', '-dash.bin', 'tab\there']
    for (const n of names) writeFile(path.join(roots.active, 'm', n), `content of ${n}\n`)
    await create(roots)
    const [name] = backups(roots)
    const check = sha256sumCheck(roots, name!)
    expect(check.status, check.stdout + check.stderr).toBe(0)
    expect(readFileSync(path.join(storeOf(roots), name!, 'SHA256SUMS'), 'utf8').split('\n').filter(Boolean)).toHaveLength(names.length)
    // The check can fail: one flipped byte makes sha256sum -c reject the manifest.
    const victim = path.join(storeOf(roots), name!, 'data', 'm', 'new\nline.txt')
    execFileSync('chmod', ['u+w', victim])
    writeFileSync(victim, 'content of new\nline.txX\n')
    expect(sha256sumCheck(roots, name!).status).not.toBe(0)
  })

  it('round-trips a Hugging Face cache: links stay links, interrupted downloads and locks stay out', async () => {
    const roots = await setUpServer()
    const repo = path.join(roots.active, 'hub', 'models--org--tiny')
    const config = '{"architectures": ["Tiny"]}\n'
    const blob = createHash('sha256').update(config).digest('hex')
    writeFile(path.join(repo, 'blobs', blob), config)
    writeFile(path.join(repo, 'blobs', `${'e'.repeat(64)}.incomplete`), 'half a download')
    writeFile(path.join(repo, 'refs', 'main'), 'abc123\n')
    mkdirSync(path.join(repo, 'snapshots', 'abc123'), { recursive: true })
    symlinkSync(`../../blobs/${blob}`, path.join(repo, 'snapshots', 'abc123', 'config.json'))
    writeFile(path.join(roots.active, 'hub', '.locks', 'models--org--tiny', `${blob}.lock`), '')

    await create(roots)
    const [name] = backups(roots)
    const data = path.join(storeOf(roots), name!, 'data', 'hub')
    const link = path.join(data, 'models--org--tiny', 'snapshots', 'abc123', 'config.json')
    expect(lstatSync(link).isSymbolicLink()).toBe(true)
    expect(readlinkSync(link)).toBe(`../../blobs/${blob}`)
    expect(readFileSync(link, 'utf8')).toBe(config)
    expect(existsSync(path.join(data, 'models--org--tiny', 'blobs', `${'e'.repeat(64)}.incomplete`))).toBe(false)
    expect(existsSync(path.join(data, '.locks'))).toBe(false)
    const catalog = JSON.parse(readFileSync(path.join(storeOf(roots), name!, 'files.json'), 'utf8'))
    expect(catalog.symlinks).toEqual([['hub/models--org--tiny/snapshots/abc123/config.json', `../../blobs/${blob}`]])
    expect(sha256sumCheck(roots, name!).status).toBe(0)
  })

  it('in check mode says what it would copy and writes nothing', async () => {
    const roots = await setUpServer()
    writeFile(path.join(roots.active, 'm', 'w.bin'), randomBytes(10_000))
    const before = snapshot(roots.backup)
    const result = await citadelJson(['backup', 'create', '--check'], roots.env)
    expect(result.code).toBe(0)
    expect(result.doc.tasks[0].msg).toMatch(/^would create backup_\d{8}_\d{6}_full of .* \(1 file, 9\.77 KiB; 9\.77 KiB to copy\)$/)
    expect(snapshot(roots.backup)).toEqual(before)
  })

  it('rejects bad arguments with one line and exit 4', async () => {
    const roots = await setUpServer()
    const result = await citadel(['backup', 'create', '--type', 'weekly'], roots.env)
    expect(result.code).toBe(4)
    expect(result.stderr.trim()).toBe('citadel: --type "weekly" is not valid: expected full or incremental')
    const missing = await citadel(['backup', 'create', path.join(roots.base, 'nope')], roots.env)
    expect(missing.code).toBe(2)
    expect(missing.stdout).toContain(`source ${path.join(roots.base, 'nope')} is not a directory`)
    expect(backups(roots)).toEqual([])
  })

  it('a create interrupted with SIGTERM mid-copy stops rsync, removes its partial copy and exits 99', async () => {
    const roots = await setUpServer()
    const { child, done } = await startCopying(roots)
    child.kill('SIGTERM')
    const result = await done
    expect(result.code, result.stdout + result.stderr).toBe(99)
    expect(result.stdout).toContain('interrupted by signal')
    expect(backups(roots)).toEqual([])
    expect(existsSync(path.join(storeOf(roots), 'latest'))).toBe(false)
    expect(spawnSync('pgrep', ['-f', `rsync .*${roots.base}`]).status, 'no rsync left running').toBe(1)
  })

  it('a create killed with SIGKILL mid-copy leaves no complete backup, and the next create cleans up and succeeds', async () => {
    const roots = await setUpServer()
    const { child, done } = await startCopying(roots)
    child.kill('SIGKILL')
    expect((await done).signal).toBe('SIGKILL')
    expect(backups(roots).every((n) => n.endsWith('.partial'))).toBe(true)
    expect(existsSync(path.join(storeOf(roots), 'latest'))).toBe(false)

    const next = await citadelJson(['backup', 'create'], roots.env)
    expect(next.code, next.stderr).toBe(0)
    expect(next.doc.tasks[0].warnings.join('\n')).toMatch(/backup_\d{8}_\d{6}_full\.partial was left by an interrupted backup or cleanup: removed it/)
    const names = backups(roots)
    expect(names).toHaveLength(1)
    expect(names[0]).toMatch(/^backup_\d{8}_\d{6}_full$/)
    expect(latest(roots)).toBe(names[0])
    expect(sha256sumCheck(roots, names[0]!).status).toBe(0)
  })
})

const mounted: string[] = []
afterEach(() => {
  for (const dir of mounted.splice(0).reverse()) execFileSync('umount', [dir])
})
const asRoot = process.getuid?.() === 0

describe.skipIf(!asRoot)('backup create on a small backup disk (root: mounts an 8 MiB tmpfs)', () => {
  async function smallDisk() {
    const roots = makeRoots()
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m,mode=0755', 'tmpfs', roots.backup])
    mounted.push(roots.backup)
    await setUp(roots)
    writeFile(path.join(roots.active, 'm', 'small.bin'), randomBytes(512 << 10))
    await create(roots, '--type', 'full')
    return roots
  }

  function expectIntact(roots: Roots, first: string) {
    expect(backups(roots)).toEqual([first])
    expect(latest(roots)).toBe(first)
    expect(sha256sumCheck(roots, first).status).toBe(0)
  }

  it('fails before copying when the backup will not fit, naming needed and available bytes', async () => {
    const roots = await smallDisk()
    const [first] = backups(roots)
    for (let i = 0; i < 3; i++) writeFile(path.join(roots.active, 'm', `big-${i}.bin`), randomBytes(4 << 20))
    const result = await citadelJson(['backup', 'create'], roots.env)
    expect(result.code).toBe(2)
    expect(result.doc.tasks[0].msg).toMatch(/^not enough space on .*: the backup needs \d+ bytes \(\d+ to copy, .*\), \d+ are available$/)
    expectIntact(roots, first!)
  })

  it('fails cleanly when the disk fills during the copy because the source grew after the check', async () => {
    const roots = await smallDisk()
    const [first] = backups(roots)
    const growing = path.join(roots.active, 'm', 'zz-growing.bin')
    writeFile(growing, randomBytes(1 << 20))
    // A thousand empty files ahead of it keep rsync busy for a while before it reads the growing file.
    for (let i = 0; i < 1000; i++) writeFile(path.join(roots.active, 'm', 'aa', `empty-${i}`), '')
    // The moment the copy starts, a download finishes as Hugging Face's do: a far bigger file is renamed
    // into place, in one step, so rsync reads either all of it or none.
    const bigger = path.join(roots.base, 'download.incomplete')
    writeFile(bigger, randomBytes(13 << 20))
    const watcher = watch(storeOf(roots), (_event, name) => {
      if (name?.endsWith('.partial')) {
        watcher.close()
        renameSync(bigger, growing)
      }
    })
    const result = await citadelJson(['backup', 'create'], roots.env)
    watcher.close()
    expect(result.code).toBe(2)
    // Not rsync's "error in socket I/O ... Broken pipe", which is all it says when its receiver died first.
    expect(result.doc.tasks[0].msg).toMatch(new RegExp(`the backup disk ${roots.backup} is full: the backup needs \\d+ bytes \\(\\d+ to copy, .*\\), \\d+ are available \\(the source grew during the copy\\); free space there or back up less$`))
    expectIntact(roots, first!)
  })
})
