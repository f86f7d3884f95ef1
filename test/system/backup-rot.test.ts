// Bit rot of a live shard: a byte the disk changed, with size, mtime, ctime and inode as they were. Made for
// real: the model disk is an ext4 image on a loop device (64 MiB: a restore wants a 16 MiB margin), and the byte is written into the image file while
// it is unmounted, underneath the filesystem.
import { execFileSync, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { chmodSync, closeSync, openSync, readFileSync, readSync, realpathSync, statSync, utimesSync, writeFileSync, writeSync } from 'node:fs'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { backUp, setUpServer, storeOf, writeFile } from '../backup-helpers.ts'
import { citadelJson, makeRoots, setUp, type Roots } from '../helpers.ts'

const asRoot = process.getuid?.() === 0
const BLOCK = 4096
const sha256 = (content: Buffer) => createHash('sha256').update(content).digest('hex')
const readJson = (file: string) => JSON.parse(readFileSync(file, 'utf8'))
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

const mounted: string[] = []
afterEach(() => {
  for (const dir of mounted.splice(0).reverse()) execFileSync('umount', [dir])
})

function mountImage(image: string, dir: string) {
  execFileSync('mount', ['-o', 'loop', image, dir])
  mounted.push(dir)
}

/** Changes one byte of `file` (on the ext4 image mounted at `roots.models`) in the image, not through the filesystem. */
function rot(roots: Roots, image: string, file: string, offset: number) {
  const inImage = '/' + path.relative(roots.models, realpathSync(file))
  execFileSync('umount', [mounted.pop()!])
  const block = Number(execFileSync('debugfs', ['-R', `bmap ${inImage} ${Math.floor(offset / BLOCK)}`, image], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim())
  expect(block).toBeGreaterThan(0)
  const at = block * BLOCK + (offset % BLOCK)
  const fd = openSync(image, 'r+')
  try {
    const byte = Buffer.alloc(1)
    readSync(fd, byte, 0, 1, at)
    byte[0] = byte[0]! ^ 0xff
    writeSync(fd, byte, 0, 1, at)
  } finally {
    closeSync(fd)
  }
  mountImage(image, roots.models)
}

const stateOf = (file: string) => {
  const st = statSync(file)
  return { ino: st.ino, size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs }
}

/** Set-up roots whose model disk is a fresh ext4 image; returns the image. */
async function onImage(roots: Roots): Promise<string> {
  const image = path.join(roots.base, 'models.img')
  execFileSync('truncate', ['-s', '64M', image])
  execFileSync('mkfs.ext4', ['-q', '-F', '-b', String(BLOCK), image])
  mountImage(image, roots.models)
  await setUp(roots)
  return image
}

describe.skipIf(!asRoot)('bit rot of a live shard (needs root: mounts a loop ext4 image as the model disk; skipped otherwise)', () => {
  it('a full backup keeps the last good copy, fails naming the file, records it, and a restore --path heals the live file', async () => {
    const roots = makeRoots()
    const image = await onImage(roots)
    const shard = path.join(roots.active, 'm', 'model-00001.safetensors')
    const edited = path.join(roots.active, 'm', 'config.json')
    const good = Buffer.alloc(3 * BLOCK, 'weights ')
    writeFile(shard, good)
    writeFile(edited, '{"layers": 1}')
    // The first backup's walk must see both files settled, as a weekly backup sees shards written long ago.
    await sleep(300)
    const first = await citadelJson(['backup', 'create', '--type', 'full'], roots.env)
    expect(first.code, first.stdout).toBe(0)
    const reference = first.doc.tasks[0].data.backup

    const before = stateOf(shard)
    rot(roots, image, shard, BLOCK + 7)
    const rotten = readFileSync(shard)
    expect(rotten.equals(good)).toBe(false)
    expect(stateOf(shard)).toEqual(before)
    // A normal edit of the same size with the mtime put back: only its ctime moves, and that is no rot.
    const editedTimes = statSync(edited)
    writeFileSync(edited, '{"layers": 2}')
    utimesSync(edited, editedTimes.atime, editedTimes.mtime)

    const full = await citadelJson(['backup', 'create', '--type', 'full'], roots.env)
    expect(full.code, full.stdout).toBe(2)
    const task = full.doc.tasks[0]
    const name = task.data.backup
    expect(task.status).toBe('failed')
    expect(task.msg).toBe(`1 live file changed on the model disk without being written (bit rot?): m/model-00001.safetensors; the backup ${name} holds their last good copy from ${reference}: citadel backup restore --path m/model-00001.safetensors`)
    const dir = path.join(storeOf(roots), name)
    expect(readJson(path.join(dir, 'backup.json')).rotten).toEqual([{ path: 'm/model-00001.safetensors', sha256_now: sha256(rotten), sha256_kept: sha256(good), from: reference }])
    expect(readFileSync(path.join(dir, 'data', 'm', 'model-00001.safetensors')).equals(good)).toBe(true)
    expect(readFileSync(path.join(dir, 'data', 'm', 'config.json'), 'utf8')).toBe('{"layers": 2}')
    // Kept and published: latest is the new backup, and the stock tool agrees with its manifest.
    expect(readFileSync(path.join(dir, 'SHA256SUMS'), 'utf8')).toContain(`${sha256(good)}  m/model-00001.safetensors\n`)
    const check = spawnSync('sha256sum', ['-c', '--strict', '--quiet', '../SHA256SUMS'], { cwd: path.join(dir, 'data'), encoding: 'utf8' })
    expect(check.status, check.stdout + check.stderr).toBe(0)
    expect(realpathSync(path.join(storeOf(roots), 'latest'))).toBe(realpathSync(dir))

    const restore = await citadelJson(['backup', 'restore', '--path', 'm/model-00001.safetensors'], roots.env)
    expect(restore.code, restore.stdout).toBe(0)
    expect(restore.doc.tasks[0].data.units).toEqual([expect.objectContaining({ name: 'm', files_to_copy: 1 })])
    expect(readFileSync(shard).equals(good)).toBe(true)

    // Healed, and edited normally once more: backed up with the new bytes, nothing reported.
    await sleep(300)
    writeFileSync(edited, '{"layers": 3}')
    const after = await citadelJson(['backup', 'create', '--type', 'full'], roots.env)
    expect(after.code, after.stdout).toBe(0)
    const last = path.join(storeOf(roots), after.doc.tasks[0].data.backup)
    expect(readJson(path.join(last, 'backup.json')).rotten).toBeUndefined()
    expect(readFileSync(path.join(last, 'data', 'm', 'config.json'), 'utf8')).toBe('{"layers": 3}')
    expect(readFileSync(path.join(last, 'data', 'm', 'model-00001.safetensors')).equals(good)).toBe(true)
  })

  it('when the previous backup\'s copy is damaged too, the backup holds the live bytes and says to look further back', async () => {
    const roots = makeRoots()
    const image = await onImage(roots)
    const shard = path.join(roots.active, 'm', 'model-00002.safetensors')
    const good = Buffer.alloc(2 * BLOCK, 'layers ')
    writeFile(shard, good)
    await sleep(300)
    const first = await citadelJson(['backup', 'create'], roots.env)
    expect(first.code, first.stdout).toBe(0)
    const reference = path.join(storeOf(roots), first.doc.tasks[0].data.backup)
    const referenceCopy = path.join(reference, 'data', 'm', 'model-00002.safetensors')
    writeFileSync(referenceCopy, Buffer.alloc(2 * BLOCK, 'damaged '))

    rot(roots, image, shard, 3)
    const rotten = readFileSync(shard)
    const full = await citadelJson(['backup', 'create', '--type', 'full'], roots.env)
    expect(full.code, full.stdout).toBe(2)
    const name = full.doc.tasks[0].data.backup
    expect(full.doc.tasks[0].msg).toBe(`1 live file changed on the model disk without being written (bit rot?): m/model-00002.safetensors; the previous backup's copy of m/model-00002.safetensors is damaged too: ${name} holds the live bytes; look for a good copy in older backups`)
    const dir = path.join(storeOf(roots), name)
    expect(readJson(path.join(dir, 'backup.json')).rotten).toEqual([{ path: 'm/model-00002.safetensors', sha256_now: sha256(rotten), sha256_kept: sha256(rotten), from: null }])
    expect(readFileSync(path.join(dir, 'data', 'm', 'model-00002.safetensors')).equals(rotten)).toBe(true)
  })
})

describe('a previous backup the check cannot read', () => {
  it('does not stop a full backup: a warning names it, and the backup is made', async () => {
    const roots = await setUpServer()
    const previous = await backUp(roots, { 'm/a.bin': 'alpha' })
    const manifest = path.join(storeOf(roots), previous, 'SHA256SUMS')
    chmodSync(manifest, 0o644)
    writeFileSync(manifest, 'not a manifest\n')
    const full = await citadelJson(['backup', 'create', '--type', 'full'], roots.env)
    expect(full.code, full.stdout).toBe(0)
    expect(full.doc.tasks[0].warnings).toEqual([`cannot check the source for bit rot against ${previous}: SHA256SUMS line 1: expected "<64 hex digits>  <name>" or "<64 hex digits> *<name>", got "not a manifest"`])
    expect(readFileSync(path.join(storeOf(roots), full.doc.tasks[0].data.backup, 'data', 'm', 'a.bin'), 'utf8')).toBe('alpha')
  })
})
