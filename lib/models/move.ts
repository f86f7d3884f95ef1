// Moving a model directory to a place that may be on another filesystem: archive/ mounted on its own disk,
// say. rename(2) cannot cross filesystems (EXDEV), and fs-extra's move then copies and removes the source
// without checking the copy, so a bad copy would be all that is left. Here the copy is made beside its
// destination, hashed against the source file by file, published by rename, and only then is the source
// taken away. Each moment of a kill leaves the source whole, or a verified copy in place: a stale copy or
// half-removed source of an earlier try carries a name of its own, and the next move of the same directory
// removes it first. The copy is fs-extra's (Node 20's fs.cp is still experimental); removal is fs.rm's.
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { copy } from 'fs-extra/esm'
import { summarize } from '../infra/format.ts'
import { lstatOrNull, moveNoReplace } from '../infra/fsx.ts'
import { hashFiles } from '../infra/hashing.ts'

/** Whether `from` and the directory `intoDir` are on different filesystems, so a rename between them fails. */
export async function crossesFilesystems(from: string, intoDir: string): Promise<boolean> {
  const [a, b] = await Promise.all([fs.lstat(from), fs.stat(intoDir)])
  return a.dev !== b.dev
}

/** The name a copy in progress has beside `to`, and the name a source being removed has beside itself. */
export const copyingName = (to: string) => path.join(path.dirname(to), `.${path.basename(to)}.citadel-copying`)
export const removingName = (from: string) => path.join(path.dirname(from), `.${path.basename(from)}.citadel-removing`)

// fs.rm does not follow a symlink inside what it removes.
const remove = (dir: string) => fs.rm(dir, { recursive: true, force: true })

interface Entry { rel: string; kind: 'dir' | 'file' | 'link'; size: number; mode: number; uid: number; gid: number; target: string | null }

/** Every entry under `root`, without following a link; anything but a directory, file or link throws. */
async function walk(root: string): Promise<Entry[]> {
  const out: Entry[] = []
  const visit = async (rel: string) => {
    const full = path.join(root, rel)
    const st = await fs.lstat(full)
    const base = { rel, size: st.size, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid }
    if (st.isSymbolicLink()) out.push({ ...base, kind: 'link', target: await fs.readlink(full) })
    else if (st.isFile()) out.push({ ...base, kind: 'file', target: null })
    else if (st.isDirectory()) {
      out.push({ ...base, size: 0, kind: 'dir', target: null })
      for (const name of (await fs.readdir(full)).sort()) await visit(rel ? path.join(rel, name) : name)
    } else throw new Error(`${full} is neither a file, a directory nor a symlink: a model directory holds none of those`)
  }
  await visit('')
  return out
}

/** How the copy differs from the source: entries, kinds, sizes, modes, owners, link targets, file hashes. */
async function differences(source: Entry[], from: string, copied: Entry[], to: string, opts: MoveOptions): Promise<string[]> {
  const problems: string[] = []
  const theirs = new Map(copied.map((e) => [e.rel, e]))
  for (const e of source) {
    const c = theirs.get(e.rel)
    const name = e.rel || '.'
    if (!c) problems.push(`${name} is missing`)
    else if (c.kind !== e.kind || c.size !== e.size || c.target !== e.target) problems.push(`${name} differs (${c.kind}, ${c.size} bytes; the source ${e.kind}, ${e.size} bytes)`)
    else if (c.mode !== e.mode || c.uid !== e.uid || c.gid !== e.gid) problems.push(`${name} has mode ${c.mode.toString(8)} owner ${c.uid}:${c.gid}, the source ${e.mode.toString(8)} ${e.uid}:${e.gid}`)
    theirs.delete(e.rel)
  }
  for (const rel of theirs.keys()) problems.push(`${rel} is not in the source`)
  if (problems.length) return problems
  const files = source.filter((e) => e.kind === 'file')
  const total = files.reduce((n, f) => n + f.size, 0) * 2
  const outcomes = await hashFiles([...files.map((f) => ({ file: path.join(from, f.rel), size: f.size })), ...files.map((f) => ({ file: path.join(to, f.rel), size: f.size }))], {
    signal: opts.signal,
    onProgress: (done) => opts.onVerify?.(done, total),
  })
  files.forEach((f, i) => {
    const [a, b] = [outcomes[i]!, outcomes[files.length + i]!]
    if (a.sha256 === null || b.sha256 === null) problems.push(`${f.rel} cannot be read (${a.error ?? b.error})`)
    else if (a.sha256 !== b.sha256) problems.push(`${f.rel} hashes to ${b.sha256} in the copy, ${a.sha256} in the source`)
  })
  return problems
}

export interface MoveOptions {
  signal?: AbortSignal
  /** Called before the copy starts: only a move across filesystems copies. */
  onCopy?: () => void
  onVerify?: (bytesDone: number, bytesTotal: number) => void
}

/**
 * Moves the directory `from` to `to`, which must not exist: by rename on one filesystem; across filesystems
 * by a copy beside `to` (fs-extra's copy, keeping modes, times and links as links), compared with the source
 * entry by entry and hashed file by file, published by rename, then the source removed. A copy that does not
 * match is removed and the source stays. Returns how it moved.
 */
export async function moveDirectory(from: string, to: string, opts: MoveOptions = {}): Promise<'renamed' | 'copied'> {
  if (!(await crossesFilesystems(from, path.dirname(to)))) {
    await moveNoReplace(from, to)
    return 'renamed'
  }
  if (await lstatOrNull(to)) throw new Error(`${to} is there already: ${from} left where it is`)
  const staging = copyingName(to)
  // What an interrupted move left: its copy was never published, the source it came from is whole.
  await remove(staging)
  await remove(removingName(from))
  opts.onCopy?.()
  const source = await walk(from)
  try {
    await copy(from, staging, { errorOnExist: true, overwrite: false, preserveTimestamps: true, dereference: false })
    // fs-extra keeps modes, not owners: root puts them back as they were, as a rename would have kept them.
    if (process.getuid?.() === 0) for (const e of source) await fs.lchown(path.join(staging, e.rel), e.uid, e.gid)
    const problems = await differences(source, from, await walk(staging), staging, opts)
    if (problems.length) throw new Error(`the copy of ${from} in ${path.dirname(to)} does not match it (${summarize(problems, 3)}); ${from} left where it is`)
  } catch (err) {
    await remove(staging)
    throw err
  }
  await moveNoReplace(staging, to)
  // Out of sight in one rename, then removed: a kill halfway leaves no half model under the old name.
  await fs.rename(from, removingName(from))
  await remove(removingName(from))
  return 'copied'
}
