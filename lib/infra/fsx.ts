// Filesystem primitives every task shares. All of them use lstat (never follow a link they inspect or
// remove), publish by rename so a reader sees the old or the new state and nothing between.
import { randomBytes } from 'node:crypto'
import { isUtf8 } from 'node:buffer'
import { existsSync, lstatSync, promises as fs, constants, readFileSync, type Stats } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

// Names are bytes on Linux, and citadel holds them as strings: a name that is not UTF-8 keeps each byte that
// is not part of a valid UTF-8 sequence as a lone surrogate U+DC80..U+DCFF (Python's "surrogateescape"), so
// it reads back as exactly the bytes it was, and JSON keeps it as \udcXX. UTF-8 names are plain strings.
const LONE_SURROGATE = /\p{Cs}/u

/** Whether a string of decodeName holds a byte that is not UTF-8. */
export const holdsRawBytes = (name: string) => LONE_SURROGATE.test(name)

/** Bytes (a name, a path, a whole manifest) as such a string. */
export function decodeName(bytes: Buffer): string {
  if (isUtf8(bytes)) return bytes.toString('utf8')
  // Line by line, so a manifest with one odd name still decodes at the speed of the others.
  const lines: string[] = []
  for (let start = 0; start <= bytes.length; ) {
    const end = bytes.indexOf(0x0a, start)
    const line = bytes.subarray(start, end === -1 ? bytes.length : end)
    lines.push(isUtf8(line) ? line.toString('utf8') : escapeBytes(line))
    if (end === -1) break
    start = end + 1
  }
  return lines.join('\n')
}

/** Strict UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF); any other byte is escaped. */
function escapeBytes(b: Buffer): string {
  let out = ''
  for (let i = 0; i < b.length; ) {
    const lead = b[i]!
    const more = lead >= 0xc2 && lead <= 0xdf ? 1 : lead >= 0xe0 && lead <= 0xef ? 2 : lead >= 0xf0 && lead <= 0xf4 ? 3 : 0
    let cp = more === 1 ? lead & 0x1f : more === 2 ? lead & 0x0f : lead & 0x07
    let valid = lead < 0x80 || (more > 0 && i + more < b.length)
    for (let k = 1; valid && k <= more; k++) {
      const next = b[i + k]!
      valid = (next & 0xc0) === 0x80
      cp = (cp << 6) | (next & 0x3f)
    }
    if (lead < 0x80) cp = lead
    else if (valid) valid = cp >= [0, 0x80, 0x800, 0x10000][more]! && cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff)
    if (valid) {
      out += String.fromCodePoint(cp)
      i += more + 1
    } else {
      out += String.fromCharCode(0xdc00 + lead)
      i++
    }
  }
  return out
}

/** A string of decodeName back to its bytes. */
export function encodeName(name: string): Buffer {
  if (!LONE_SURROGATE.test(name)) return Buffer.from(name, 'utf8')
  const parts: Buffer[] = []
  let start = 0
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i)
    if (c < 0xd800 || c > 0xdfff) continue
    const next = name.charCodeAt(i + 1)
    if (c <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
      i++ // a pair: a character like any other
      continue
    }
    if (c < 0xdc80 || c > 0xdcff) throw new Error(`${JSON.stringify(name)} holds U+${c.toString(16).toUpperCase()}, which stands for no byte of a file name`)
    parts.push(Buffer.from(name.slice(start, i), 'utf8'), Buffer.of(c - 0xdc00))
    start = i + 1
  }
  parts.push(Buffer.from(name.slice(start), 'utf8'))
  return Buffer.concat(parts)
}

/** A name for an operator to read and paste into bash's $'...': each byte that is not UTF-8 as \\xHH. */
export const showName = (name: string) => name.replace(/\p{Cs}/gu, (c) => `\\x${(c.charCodeAt(0) - 0xdc00).toString(16).padStart(2, '0')}`)

/** What to hand to fs for a path: the string itself, or its bytes when it holds a name that is not UTF-8. */
export const fsPath = (p: string): string | Buffer => (LONE_SURROGATE.test(p) ? encodeName(p) : p)

/** lstat for the synchronous walks of a backup: whatever stands in the way of reading it counts as nothing there. */
export function lstatSyncOrNull(p: string): Stats | null {
  try {
    return lstatSync(fsPath(p))
  } catch {
    return null
  }
}

export async function lstatOrNull(p: string): Promise<Stats | null> {
  try {
    return await fs.lstat(fsPath(p))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return null
    throw err
  }
}

/** A hidden sibling name for staging a replacement; unique per process and call. */
export function tempSibling(p: string, purpose = 'tmp'): string {
  return path.join(path.dirname(p), `.${path.basename(p)}.citadel-${purpose}-${process.pid}-${randomBytes(4).toString('hex')}`)
}

/** Whether `name` is one a tempSibling(_, purpose) call made: a killed process's leftover when no process writes it. */
export const isTempSiblingName = (name: string, purpose: string) => name.startsWith('.') && new RegExp(`\\.citadel-${purpose}-\\d+-[0-9a-f]{8}$`).test(name)

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

/** Whether `p` lies strictly inside `root` (not `root` itself), both resolved lexically. */
export function isInside(root: string, p: string): boolean {
  const rel = path.relative(path.resolve(root), path.resolve(p))
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel)
}

/** Throws unless `p` lies strictly inside `root`. */
export function assertInside(root: string, p: string): void {
  if (!isInside(root, p)) throw new Error(`refusing ${p}: it is not inside ${root}`)
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

/** Set in a bundle by bin/citadel.js to the checkout it was built from; undefined in the sources. */
declare const __CITADEL_CHECKOUT__: string | undefined

/** The checkout citadel runs from: the one its bundle was built from, or the nearest package.json named citadel above these sources. */
export function projectRoot(): string {
  if (typeof __CITADEL_CHECKOUT__ === 'string') return __CITADEL_CHECKOUT__
  let dir = path.dirname(fileURLToPath(import.meta.url))
  for (;;) {
    const manifest = path.join(dir, 'package.json')
    if (existsSync(manifest) && JSON.parse(readFileSync(manifest, 'utf8')).name === 'citadel') return dir
    const parent = path.dirname(dir)
    if (parent === dir) throw new Error('cannot find the citadel project root above ' + fileURLToPath(import.meta.url))
    dir = parent
  }
}
