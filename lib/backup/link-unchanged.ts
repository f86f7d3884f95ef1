// An incremental hard-links, in-process, the files its parent provably holds as they are now, and hands rsync
// only the directories, the symlinks and the files that differ: an unchanged tree of many small files then
// costs one walk and one link(2) per file instead of rsync listing and comparing every file on both sides.
//
// "Provably": each backup records the inode and ctime of every source file as its walk saw them (`source`
// in files.json). Every write, truncate, rename, chmod or utime sets a file's ctime to the current time
// and nothing sets it back, so a file with the same inode and ctime as then still holds what the parent
// copied, whatever its size and mtime say. A ctime just before that walk proves nothing: a write just after
// it may have been stamped with the same ctime (see settledBefore). A file whose attributes match the
// parent's copy without that proof (restored, moved, touched, changed in place with its size and mtime kept,
// or a parent made before the record existed) is hashed, and linked only when it hashes to the parent's
// manifest entry. rsync's quick check (size and mtime) would link all of them unread.
import { linkSync, mkdirSync, promises as fs, readFileSync } from 'node:fs'
import path from 'node:path'
import { fsPath, lstatSyncOrNull } from '../infra/fsx.ts'
import { hashFiles } from '../infra/hashing.ts'
import { compareBytewise, parseManifestBytes } from './manifest.ts'
import { CATALOG, DATA, MANIFEST } from './store.ts'
import type { Tree, TreeFile } from '../infra/tree.ts'

/**
 * Whether a ctime recorded by a walk begun at `listedAtMs` would have moved with any later write. The kernel
 * stamps from a clock that lags by up to a tick (10 ms at HZ=100): a ctime well over a tick before the walk
 * cannot be repeated by a write after it. A filesystem that keeps whole seconds (or two) rounds a later
 * write down to the same second: there only a ctime two seconds before the walk proves anything.
 */
function settledBefore(ctimeMs: number, listedAtMs: number): boolean {
  const wholeSeconds = ctimeMs % 1000 === 0
  return ctimeMs < listedAtMs - (wholeSeconds ? 2000 : 100)
}

export interface ParentMatch {
  parentDir: string
  /** Same inode and ctime as when the parent's walk saw them, same attributes as the parent's copy. */
  link: TreeFile[]
  /** Same size, mtime (to the second), mode and owner as the parent's copy, but not proven unchanged. */
  check: TreeFile[]
  /** New, different, or found bad in the parent: for rsync. */
  copy: TreeFile[]
  /** dev:ino of the parent's copy of each file of `link` and `check`. */
  parentInodes: Map<string, string>
  /** The parent's copy of each file of `link` and `check`, as lstat saw it. */
  parentCopies: Map<string, TreeFile>
  /** Files the parent's last verification of them found bad: copied afresh, never linked. */
  fresh: string[]
}

/** The inode and ctime of each source file the parent's walk saw long enough after its last change. */
export function settledState(parentDir: string, listedAt: string | undefined): Map<string, [number, number]> {
  if (listedAt === undefined) return new Map()
  try {
    const catalogFile = path.join(parentDir, CATALOG)
    const listedAtMs = Date.parse(listedAt)
    const state = parseSourceState(readFileSync(catalogFile, 'utf8'), catalogFile)
    return new Map(state.filter(([, , ctimeMs]) => settledBefore(ctimeMs, listedAtMs)).map(([rel, ino, ctimeMs]) => [rel, [ino, ctimeMs]]))
  } catch {
    // Without a readable record nothing is proven unchanged: every candidate is hashed, none trusted.
    return new Map()
  }
}

/** The `source` of a catalog; checked by hand, as a schema takes ten times as long for thousands of entries. */
function parseSourceState(text: string, file: string): [string, number, number][] {
  const state: unknown = (JSON.parse(text) as { source?: unknown }).source
  const valid = (e: unknown) => Array.isArray(e) && e.length === 3 && typeof e[0] === 'string' && Number.isSafeInteger(e[1]) && typeof e[2] === 'number'
  if (!Array.isArray(state) || !state.every(valid)) throw new Error(`${file}: expected "source", a list of [path, inode, ctime in ms]`)
  return state as [string, number, number][]
}

/** Sorts the source's files by what the parent backup in `parentDir` already holds of them. */
export function matchParent(files: TreeFile[], parentDir: string, suspect: Set<string>, listedAt: string | undefined): ParentMatch {
  const recorded = settledState(parentDir, listedAt)
  const asRoot = process.getuid?.() === 0
  const match: ParentMatch = { parentDir, link: [], check: [], copy: [], parentInodes: new Map(), parentCopies: new Map(), fresh: [] }
  for (const f of files) {
    if (suspect.has(f.rel)) {
      match.fresh.push(f.rel)
      match.copy.push(f)
      continue
    }
    const old = lstatSyncOrNull(path.join(parentDir, DATA, f.rel))
    // A link shares the parent's inode, so what -a preserves must already be right on it.
    if (!old?.isFile() || old.size !== f.size || Math.trunc(old.mtimeMs / 1000) !== Math.trunc(f.mtimeMs / 1000) || old.mode !== f.mode || (asRoot && (old.uid !== f.uid || old.gid !== f.gid))) {
      match.copy.push(f)
      continue
    }
    match.parentInodes.set(f.rel, `${old.dev}:${old.ino}`)
    match.parentCopies.set(f.rel, { rel: f.rel, size: old.size, mode: old.mode, uid: old.uid, gid: old.gid, ino: old.ino, dev: old.dev, nlink: old.nlink, mtimeMs: old.mtimeMs, ctimeMs: old.ctimeMs })
    const then = recorded.get(f.rel)
    ;(then !== undefined && then[0] === f.ino && then[1] === f.ctimeMs ? match.link : match.check).push(f)
  }
  keepLinkGroups(match)
  return match
}

/**
 * rsync -H gives the names of one source inode one inode in the copy; linking some of them here and copying
 * others would split it, and linking two source inodes to one of the parent's would merge them. So a source
 * inode is linked only when all its names are, each to the one parent inode no other source inode uses;
 * otherwise all its names go to rsync.
 */
function keepLinkGroups(match: ParentMatch): void {
  const sourceKey = (f: TreeFile) => `${f.dev}:${f.ino}`
  const split = new Set(match.copy.filter((f) => f.nlink > 1).map(sourceKey))
  const toParent = new Map<string, string>()
  const toSource = new Map<string, string>()
  for (const f of [...match.link, ...match.check]) {
    const s = sourceKey(f)
    const p = match.parentInodes.get(f.rel)!
    const other = toSource.get(p)
    if (other !== undefined && other !== s) split.add(other).add(s)
    if ((toParent.get(s) ?? p) !== p) split.add(s)
    toParent.set(s, p)
    toSource.set(p, s)
  }
  if (!split.size) return
  const whole = (f: TreeFile) => !split.has(sourceKey(f))
  for (const f of [...match.link, ...match.check].filter((f) => !whole(f))) {
    match.copy.push(f)
    match.parentInodes.delete(f.rel)
    match.parentCopies.delete(f.rel)
  }
  match.link = match.link.filter(whole)
  match.check = match.check.filter(whole)
}

export interface Linked {
  /** The files rsync copies. */
  copy: TreeFile[]
  /** What rsync is handed (relative to the source): the root, every directory and symlink, the files to copy. */
  rsyncList: string[]
  /** The files linked, as the parent's copy of each was when it was matched: the copy need not stat them again. */
  linked: Map<string, TreeFile>
  /** Bytes of the source read to compare files not proven unchanged with the parent's manifest. */
  hashedBytes: number
}

/** Gives `dest` the mode, owner (as root) and times of `src`, as rsync -a would have had it been listed. */
export async function copyRootAttributes(src: string, dest: string): Promise<void> {
  const st = await fs.stat(src)
  if (process.getuid?.() === 0) await fs.chown(dest, st.uid, st.gid)
  await fs.chmod(dest, st.mode & 0o7777)
  await fs.utimes(dest, st.atimeMs / 1000, st.mtimeMs / 1000)
}

/**
 * Hard-links into `dest` (the new backup's data/, empty) the parent's copy of every file of `match` that
 * holds what the source holds, after creating every directory of `source`; says what rsync has left to do.
 */
export async function linkUnchanged(src: string, dest: string, source: Tree, match: ParentMatch, signal: AbortSignal, onProgress: (line: string) => void): Promise<Linked> {
  const link = [...match.link]
  const copy = [...match.copy]
  let hashedBytes = 0
  if (match.check.length) {
    onProgress(`hashing ${match.check.length} files to compare with ${path.basename(match.parentDir)}`)
    const expected = new Map(parseManifestBytes(await fs.readFile(path.join(match.parentDir, MANIFEST))).map((e) => [e.path, e.sha256]))
    const outcomes = await hashFiles(match.check.map((f) => ({ file: path.join(src, f.rel), size: f.size })), { signal })
    outcomes.forEach((o, i) => {
      const f = match.check[i]!
      hashedBytes += o.bytesRead
      ;(o.sha256 !== null && o.sha256 === expected.get(f.rel) ? link : copy).push(f)
    })
  }
  onProgress(`linking ${link.length} unchanged files to ${path.basename(match.parentDir)}`)
  // Private until rsync gives each directory its mode, owner and times.
  for (const dir of source.dirPaths) mkdirSync(fsPath(path.join(dest, dir)), { mode: 0o700 })
  const parentData = path.join(match.parentDir, DATA)
  link.forEach((f, i) => {
    if (i % 1024 === 0) signal.throwIfAborted()
    linkSync(fsPath(path.join(parentData, f.rel)), fsPath(path.join(dest, f.rel)))
  })
  // Not '.': rsync 3.5 sends the files directly inside a listed '.' whatever the list says, and would copy
  // over the links just made. The root's own mode, owner and times are set by copyRootAttributes.
  const rsyncList = [...source.dirPaths, ...source.symlinks.map((l) => l.rel), ...copy.map((f) => f.rel)]
  return { copy, rsyncList, linked: new Map(link.map((f) => [f.rel, match.parentCopies.get(f.rel)!])), hashedBytes }
}

/** The inode and ctime of each source file as the walk saw them, by path, for the catalog's `source`. */
export const sourceState = (files: TreeFile[]): [string, number, number][] =>
  files.map((f): [string, number, number] => [f.rel, f.ino, f.ctimeMs]).sort((a, b) => compareBytewise(a[0], b[0]))
