// Making a backup: what the copy will cost, the copy, the manifest, and publishing the result by rename.
// Hashing reads the source while rsync writes the slow backup disk, so the manifest costs no extra pass
// over that disk; a file is taken from that early hash only when its source provably did not change.
import { promises as fs, lstatSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { CATALOG, DATA, MANIFEST, partialName, removeBackupDir, walkTree, writeFirstMeta, type BackupType, type Catalog, type Tree, type TreeFile } from './backups.ts'
import { fsPath, fsyncDir } from './fsx.ts'
import { hashFiles, type HashOutcome } from './hashing.ts'
import { compareBytewise, manifestBytes, parseManifestBytes, type ManifestEntry } from './manifest.ts'
import { bytes, progressLine } from './report.ts'
import { excluded, rsyncCopy } from './rsync.ts'
import type { TaskContext } from './task.ts'

const BLOCK = 4096

export interface CopyPlan {
  source: Tree
  /** Source files rsync will copy: all for a full backup, those not matching the parent for an incremental. */
  toCopy: TreeFile[]
  bytesToCopy: number
  /** Bytes the backup will take on the backup disk, with room for directories, links and metadata. */
  bytesNeeded: number
  /** dev:ino of each of the parent's files, by path: the manifest takes the parent's hash where they match. */
  parentInodes: Map<string, string>
}

/**
 * Walks the source and predicts what rsync will copy: a file is hard-linked to the parent's only when its
 * quick check (size, mtime) and the attributes -a preserves (mode, and owner when root) all match.
 */
export function planCopy(src: string, parentDir: string | null): CopyPlan {
  const source = walkTree(src, excluded)
  const asRoot = process.getuid?.() === 0
  const parentInodes = new Map<string, string>()
  const toCopy = source.files.filter((f) => {
    if (parentDir === null) return true
    const old = statOrNull(path.join(parentDir, DATA, f.rel))
    if (!old?.isFile()) return true
    parentInodes.set(f.rel, `${old.dev}:${old.ino}`)
    const owner = asRoot && (old.uid !== f.uid || old.gid !== f.gid)
    return old.size !== f.size || Math.trunc(old.mtimeMs / 1000) !== Math.trunc(f.mtimeMs / 1000) || old.mode !== f.mode || owner
  })
  const bytesToCopy = toCopy.reduce((sum, f) => sum + f.size, 0)
  const blocks = toCopy.reduce((sum, f) => sum + Math.ceil(f.size / BLOCK) * BLOCK, 0)
  const entries = source.files.length + source.symlinks.length + source.dirs
  // A directory entry and an inode per entry, and the manifest and catalog lines (two per file).
  const overhead = entries * BLOCK + source.files.reduce((sum, f) => sum + 2 * (f.rel.length + 80), 0)
  const bytesNeeded = blocks + overhead + Math.max(1 << 20, Math.ceil((blocks + overhead) * 0.01))
  return { source, toCopy, bytesToCopy, bytesNeeded, parentInodes }
}

/** Hashes of source files taken while rsync copies, with the state each was hashed in. */
export type EarlyHashes = Map<string, { hash: string; file: TreeFile }>

export async function hashSource(src: string, files: TreeFile[], signal: AbortSignal, onProgress: (bytes: number) => void): Promise<EarlyHashes> {
  // One core stays with rsync, which is busy on the other.
  const threads = Math.max(1, os.availableParallelism() - 1)
  const outcomes = await hashFiles(files.map((f) => ({ file: path.join(src, f.rel), size: f.size })), { threads, signal, onProgress })
  const early: EarlyHashes = new Map()
  outcomes.forEach((o, i) => {
    if (o.sha256 !== null) early.set(files[i]!.rel, { hash: o.sha256, file: files[i]! })
  })
  return early
}

const unchanged = (a: TreeFile, b: { size: number; mtimeMs: number; ctimeMs: number; ino: number }) =>
  a.size === b.size && a.mtimeMs === b.mtimeMs && a.ctimeMs === b.ctimeMs && a.ino === b.ino

export interface ManifestResult {
  copy: Tree
  entries: ManifestEntry[]
  catalog: Catalog
  /** Bytes read to hash: early hashes of the source plus hashes of the copy. */
  hashedBytes: number
  reused: number
}

/**
 * The manifest of `dir`/data. An entry comes from the parent's manifest when the file is the parent's
 * (same inode), from the early hash when the source file is unchanged since it was hashed (same size,
 * mtime, ctime and inode; rsync checks its own transfer), and otherwise from hashing the copy.
 */
export async function buildManifest(
  dir: string,
  src: string,
  parentDir: string | null,
  parentInodes: Map<string, string>,
  early: EarlyHashes,
  signal: AbortSignal,
  onProgress: (bytes: number, total: number) => void,
): Promise<ManifestResult> {
  const data = path.join(dir, DATA)
  const copy = walkTree(data)
  const parentHashes = new Map<string, string>()
  if (parentDir !== null) for (const e of parseManifestBytes(await fs.readFile(path.join(parentDir, MANIFEST)))) parentHashes.set(e.path, e.sha256)
  const hashes = new Map<string, string>()
  const toHash: TreeFile[] = []
  let reused = 0
  for (const f of copy.files) {
    const fromParent = parentHashes.get(f.rel)
    if (fromParent !== undefined && parentInodes.get(f.rel) === `${f.dev}:${f.ino}`) {
      hashes.set(f.rel, fromParent)
      reused++
      continue
    }
    const seen = early.get(f.rel)
    const now = seen && statOrNull(path.join(src, f.rel))
    if (seen && now && unchanged(seen.file, now) && f.size === seen.file.size && Math.abs(f.mtimeMs - seen.file.mtimeMs) < 1) hashes.set(f.rel, seen.hash)
    else toHash.push(f)
  }
  const total = toHash.reduce((sum, f) => sum + f.size, 0)
  const outcomes: HashOutcome[] = await hashFiles(toHash.map((f) => ({ file: path.join(data, f.rel), size: f.size })), { signal, onProgress: (done) => onProgress(done, total) })
  outcomes.forEach((o, i) => {
    if (o.sha256 === null) throw new Error(`cannot hash ${toHash[i]!.rel} in the copy: ${o.error}`)
    hashes.set(toHash[i]!.rel, o.sha256)
  })
  const entries = [...hashes].map(([p, sha256]) => ({ path: p, sha256 }))
  const catalog: Catalog = {
    files: copy.files.map((f): [string, number] => [f.rel, f.size]).sort((a, b) => compareBytewise(a[0], b[0])),
    symlinks: copy.symlinks.map((l): [string, string] => [l.rel, l.target]).sort((a, b) => compareBytewise(a[0], b[0])),
  }
  const hashedEarly = [...early.values()].reduce((sum, e) => sum + e.file.size, 0)
  return { copy, entries, catalog, hashedBytes: hashedEarly + total, reused }
}

function statOrNull(p: string) {
  try {
    return lstatSync(fsPath(p))
  } catch {
    return null
  }
}

/**
 * Writes the manifest and catalog into the backup. A file equal to the parent's is a hard link to it:
 * an unchanged incremental of many small files would otherwise spend megabytes on identical lists.
 */
export async function writeLists(dir: string, parentDir: string | null, result: ManifestResult): Promise<void> {
  const files: [string, Buffer][] = [[MANIFEST, manifestBytes(result.entries)], [CATALOG, Buffer.from(JSON.stringify(result.catalog) + '\n')]]
  for (const [name, content] of files) {
    const target = path.join(dir, name)
    const parentFile = parentDir === null ? null : path.join(parentDir, name)
    if (parentFile && (await fs.readFile(parentFile).catch(() => null))?.equals(content)) await fs.link(parentFile, target)
    else await fs.writeFile(target, content, { mode: 0o444 })
  }
}

export interface BuildRequest {
  src: string
  /** The backup's final path; it is built beside it as <final>.partial. */
  final: string
  name: string
  type: BackupType
  started: Date
  parentDir: string | null
  plan: CopyPlan
}

export interface BuildOutcome { files: number; bytes: number; copied_bytes: number; hashed_bytes: number; reused_hashes: number; rsync_exit: number }

/**
 * Copies, hashes, writes the lists and metadata, syncs the backup disk, then renames the partial directory
 * to its final name. On any failure or interrupt the partial directory is removed and nothing is published.
 */
export async function buildBackup(ctx: TaskContext, req: BuildRequest): Promise<BuildOutcome> {
  const { src, final, parentDir, plan } = req
  const partial = path.join(path.dirname(final), partialName(req.name))
  // Hashing the source stops with the copy: when rsync fails, and when the run is interrupted.
  const stopHashing = new AbortController()
  const hashSignal = AbortSignal.any([ctx.signal, stopHashing.signal])
  let published = false
  try {
    await fs.mkdir(path.join(partial, DATA), { recursive: true, mode: 0o755 })
    const copyStart = Date.now()
    let copied = 0
    let hashedEarly = 0
    const show = () => ctx.progress(`${progressLine('copying', copied, plan.bytesToCopy, copyStart)}; hashed ${bytes(hashedEarly)}`)
    const early = hashSource(src, plan.toCopy, hashSignal, (b) => ((hashedEarly = b), show()))
    early.catch(() => {})
    const copy = await rsyncCopy(ctx.$, { src, dest: path.join(partial, DATA), linkDest: parentDir && path.join(parentDir, DATA), signal: ctx.signal, onBytes: (b) => ((copied = b), show()) })
    if (copy.error) throw new Error(copy.error)
    for (const w of copy.warnings) ctx.warn(w)
    const hashStart = Date.now()
    const manifest = await buildManifest(partial, src, parentDir, plan.parentInodes, await early, ctx.signal, (done, total) => ctx.progress(progressLine('hashing the copy:', done, total, hashStart)))
    await writeLists(partial, parentDir, manifest)
    const totalBytes = manifest.copy.files.reduce((s, f) => s + f.size, 0)
    await writeFirstMeta(partial, {
      format: 1, name: req.name, type: req.type, source: src, started: req.started.toISOString(), finished: new Date().toISOString(),
      files: manifest.copy.files.length, bytes: totalBytes, symlinks: manifest.copy.symlinks.length, parent: parentDir && path.basename(parentDir),
      rsync: { exit_code: copy.exitCode, warnings: copy.warnings }, hashed_bytes: manifest.hashedBytes, reused_hashes: manifest.reused, verifications: [],
    })
    ctx.progress('syncing the backup disk')
    await ctx.$`sync --file-system ${partial}`
    await fs.rename(partial, final)
    published = true
    await fsyncDir(path.dirname(final))
    return { files: manifest.copy.files.length, bytes: totalBytes, copied_bytes: copied, hashed_bytes: manifest.hashedBytes, reused_hashes: manifest.reused, rsync_exit: copy.exitCode }
  } finally {
    stopHashing.abort()
    if (!published) await removeBackupDir(ctx.settings, partial).catch((err) => ctx.warn(`could not remove ${partial}: ${(err as Error).message}`))
  }
}
