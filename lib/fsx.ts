// Filesystem primitives every task shares. All of them use lstat (never follow a link they inspect or
// remove), publish by rename so a reader sees the old or the new state and nothing between.
import { randomBytes } from 'node:crypto'
import { existsSync, promises as fs, constants, readFileSync, type Stats } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export async function lstatOrNull(p: string): Promise<Stats | null> {
  try {
    return await fs.lstat(p)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return null
    throw err
  }
}

/** A hidden sibling name for staging a replacement; unique per process and call. */
export function tempSibling(p: string, purpose = 'tmp'): string {
  return path.join(path.dirname(p), `.${path.basename(p)}.citadel-${purpose}-${process.pid}-${randomBytes(4).toString('hex')}`)
}

/**
 * Removes what a killed process left of tempSibling(p, purpose): only entries of that exact name
 * pattern and of the kind the purpose creates (links for 'link', files for 'write').
 */
export async function removeTempSiblings(p: string, purpose: 'link' | 'write'): Promise<void> {
  const prefix = `.${path.basename(p)}.citadel-${purpose}-`
  const dir = path.dirname(p)
  for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
    if (!name.startsWith(prefix)) continue
    const st = await lstatOrNull(path.join(dir, name))
    if (purpose === 'link' ? st?.isSymbolicLink() : st?.isFile()) await fs.unlink(path.join(dir, name))
  }
}

/** Points `linkPath` at `target` in one rename: readers see the old target or the new, never no link. */
export async function atomicSymlink(target: string, linkPath: string): Promise<void> {
  const tmp = tempSibling(linkPath, 'link')
  await fs.symlink(target, tmp)
  try {
    await fs.rename(tmp, linkPath)
  } catch (err) {
    await fs.unlink(tmp).catch(() => {})
    throw err
  }
}

export async function fsyncDir(dir: string): Promise<void> {
  const handle = await fs.open(dir, constants.O_RDONLY | constants.O_DIRECTORY)
  try {
    await handle.sync()
  } finally {
    await handle.close()
  }
}

/** Writes a file by temp file + fsync + rename, so a crash leaves the old content or the new. */
export async function atomicWriteFile(file: string, content: string, mode = 0o644): Promise<void> {
  const tmp = tempSibling(file, 'write')
  const handle = await fs.open(tmp, 'wx', mode)
  try {
    try {
      await handle.writeFile(content)
      await handle.chmod(mode)
      await handle.sync()
    } finally {
      await handle.close()
    }
    await fs.rename(tmp, file)
  } catch (err) {
    await fs.unlink(tmp).catch(() => {})
    throw err
  }
  await fsyncDir(path.dirname(file))
}

export async function readFileOrNull(file: string): Promise<string | null> {
  try {
    return await fs.readFile(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw err
  }
}

export async function entryCount(dir: string): Promise<number> {
  return (await fs.readdir(dir)).length
}

/** Throws unless `p` lies strictly inside `root` once both are resolved lexically. */
export function assertInside(root: string, p: string): void {
  const rel = path.relative(path.resolve(root), path.resolve(p))
  if (rel === '' || rel.startsWith('..') || path.isAbsolute(rel)) throw new Error(`refusing ${p}: it is not inside ${root}`)
}

export function describeEntry(st: Stats | null): string {
  if (!st) return 'nothing'
  if (st.isSymbolicLink()) return 'a symlink'
  if (st.isDirectory()) return 'a directory'
  if (st.isFile()) return `a file of ${st.size} bytes`
  return 'a special file'
}

export const octal = (mode: number) => '0' + (mode & 0o7777).toString(8)

/** UTC time stamp that sorts as text and is safe in a file name: 20261129T171500Z. */
export function fileStamp(date = new Date()): string {
  return date.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')
}

/**
 * A free sibling name to move `p` aside to: `<p>.citadel-aside-<time>`, then `-2`, `-3`, ... for more moves
 * within the same second. Chosen before the move so the journal can name where the move-back comes from.
 */
export async function asideName(p: string, date = new Date()): Promise<string> {
  const base = `${p}.citadel-aside-${fileStamp(date)}`
  for (let n = 1; ; n++) {
    const aside = n === 1 ? base : `${base}-${n}`
    if (!(await lstatOrNull(aside))) return aside
  }
}

/**
 * Renames `from` to `to`, failing with EEXIST instead of replacing anything there. rename(2) silently
 * replaces a file, or an empty directory: so `to` is first claimed by an exclusive create of the same kind,
 * which fails when the name is taken, and the rename replaces only that placeholder of our own.
 */
export async function moveNoReplace(from: string, to: string): Promise<void> {
  const isDir = (await fs.lstat(from)).isDirectory()
  if (isDir) await fs.mkdir(to, { mode: 0o700 })
  else await (await fs.open(to, 'wx', 0o600)).close()
  try {
    await fs.rename(from, to)
  } catch (err) {
    await (isDir ? fs.rmdir(to) : fs.unlink(to)).catch(() => {})
    throw err
  }
  await fsyncDir(path.dirname(to))
}

/** The path of an executable on PATH, or null; no shell involved. */
export async function which(name: string): Promise<string | null> {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue
    try {
      await fs.access(path.join(dir, name), constants.X_OK)
      return path.join(dir, name)
    } catch {
      // not in this directory
    }
  }
  return null
}

/** The checkout citadel runs from: the nearest package.json named citadel above this module (or its bundle). */
export function projectRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url))
  for (;;) {
    const manifest = path.join(dir, 'package.json')
    if (existsSync(manifest) && JSON.parse(readFileSync(manifest, 'utf8')).name === 'citadel') return dir
    const parent = path.dirname(dir)
    if (parent === dir) throw new Error('cannot find the citadel project root above ' + fileURLToPath(import.meta.url))
    dir = parent
  }
}
