// Making a backup: what the copy will cost, the copy, the manifest, and publishing the result by rename.
// Hashing reads the source while rsync writes the slow backup disk, so the manifest costs no extra pass
// over that disk; a file is taken from that early hash only when its source provably did not change.
import { promises as fs, readFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { CATALOG, DATA, META, MANIFEST, partialName, VERIFY_STATE, type BackupMeta, type BackupType, type Catalog } from './store.ts'
import { removeBackupDir, writeFirstMeta } from './local-store.ts'
import { listTree, statFiles, walkTree, type Tree, type TreeFile } from '../infra/tree.ts'
import { fsyncDir, lstatSyncOrNull } from '../infra/fsx.ts'
import { hashFiles, type HashOutcome } from '../infra/hashing.ts'
import { compareBytewise, manifestBytes, parseManifestBytes, type ManifestEntry } from './manifest.ts'
import { excluded, rsyncCopy } from './rsync.ts'
import { backupMetaSchema, parseFile } from '../infra/schemas.ts'
import type { TaskContext } from '../core/task.ts'
import { parseVerifyState } from './verify.ts'
import { copyRootAttributes, linkUnchanged, matchParent, settledState, sourceState, type ParentMatch } from './link-unchanged.ts'
import { keepLastGoodCopies, type RotReference, type RottenFile } from './rot.ts'
import { bytes, count, progressLine, summarize } from '../infra/format.ts'

const BLOCK = 4096

export interface CopyPlan {
  /** When the walk of the source began. */
  listedAt: Date
  source: Tree
  /**
   * Source files rsync will copy: all for a full backup; for an incremental, those not matching the parent
   * (a file hashed before it is linked counts as matching, as it almost always is).
   */
  toCopy: TreeFile[]
  /** For an incremental, what the parent already holds of the source. */
  match: ParentMatch | null
  bytesToCopy: number
  /** Bytes the backup will take on the backup disk, with room for directories, links and metadata. */
  bytesNeeded: number
  /** dev:ino of each of the parent's files, by path: the manifest takes the parent's hash where they match. */
  parentInodes: Map<string, string>
  /** Files the parent's last verification of them found bad: copied afresh, never linked to the parent's. */
  fresh: string[]
  /** New inodes the backup takes: files copied, directories, links, and its lists and metadata. */
  inodesNeeded: number
}

/**
 * Paths of the backup in `dir` whose last verification found a problem: a verification that found one,
 * and no later one that hashed the file as the manifest says.
 */
function suspectFiles(dir: string, meta: BackupMeta): Set<string> {
  const lastBad = new Map<string, string>()
  // A list that could not be read says nothing about the file of the same name under data/.
  for (const v of meta.verifications) for (const p of v.problems) if (p.kind !== 'list' && v.at > (lastBad.get(p.path) ?? '')) lastBad.set(p.path, v.at)
  if (!lastBad.size) return new Set()
  const stateFile = path.join(dir, VERIFY_STATE)
  let text: string | null = null
  try {
    text = readFileSync(stateFile, 'utf8')
  } catch {
    // Without a readable state no file proved good since: every file ever found bad stays suspect.
  }
  const good = parseVerifyState(text, () => {}, stateFile)
  return new Set([...lastBad].filter(([rel, at]) => !((good[rel] ?? '') > at)).map(([rel]) => rel))
}

/** What the rot check needs of the previous complete backup in `dir` (see rot.ts). */
async function rotReference(dir: string): Promise<RotReference> {
  const metaFile = path.join(dir, META)
  const meta = parseFile(backupMetaSchema, metaFile, await fs.readFile(metaFile, 'utf8'))
  const expected = new Map(parseManifestBytes(await fs.readFile(path.join(dir, MANIFEST))).map((e) => [e.path, e.sha256]))
  return { dir, settled: settledState(dir, meta.source_listed_at), suspect: suspectFiles(dir, meta), expected }
}

/**
 * Walks the source and predicts what will be copied: a file is hard-linked to the parent's when its size,
 * mtime and the attributes -a preserves (mode, and owner when root) match the parent's copy (see
 * link-unchanged.ts for when that is taken on trust and when the file is hashed first).
 */
export function planCopy(src: string, parentDir: string | null): CopyPlan {
  const listedAt = new Date()
  const source = walkTree(src, excluded)
  let match: ParentMatch | null = null
  if (parentDir !== null) {
    const metaFile = path.join(parentDir, META)
    const parentMeta = parseFile(backupMetaSchema, metaFile, readFileSync(metaFile, 'utf8'))
    match = matchParent(source.files, parentDir, suspectFiles(parentDir, parentMeta), parentMeta.source_listed_at)
  }
  const toCopy = match?.copy ?? source.files
  const bytesToCopy = toCopy.reduce((sum, f) => sum + f.size, 0)
  const blocks = toCopy.reduce((sum, f) => sum + Math.ceil(f.size / BLOCK) * BLOCK, 0)
  const entries = source.files.length + source.symlinks.length + source.dirPaths.length
  // A directory entry and an inode per entry, and the manifest and catalog lines (two per file).
  const overhead = entries * BLOCK + source.files.reduce((sum, f) => sum + 2 * (f.rel.length + 80), 0)
  const bytesNeeded = blocks + overhead + Math.max(1 << 20, Math.ceil((blocks + overhead) * 0.01))
  // The data/ and partial directories, the manifest, catalog, metadata and verify state, and a margin.
  const inodesNeeded = toCopy.length + source.symlinks.length + source.dirPaths.length + 8
  return { listedAt, source, toCopy, match, bytesToCopy, bytesNeeded, parentInodes: match?.parentInodes ?? new Map(), fresh: match?.fresh ?? [], inodesNeeded }
}

/** Why the backup of `plan` does not fit on the disk of `dir` (bytes, then inodes), or null when it does. */
export async function spaceShortfall(plan: CopyPlan, dir: string): Promise<string | null> {
  const { bavail, bsize, files, ffree } = await fs.statfs(dir)
  const available = bavail * bsize
  if (plan.bytesNeeded > available) return `the backup needs ${plan.bytesNeeded} bytes (${plan.bytesToCopy} to copy, the rest directories, metadata and a margin), ${available} are available`
  // A filesystem that makes inodes as it needs them (btrfs) reports none at all.
  if (files > 0 && plan.inodesNeeded > ffree) return `the backup needs ${plan.inodesNeeded} inodes (${count(plan.toCopy.length, 'file')} to copy, the rest directories, links and metadata), ${ffree} are free`
  return null
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
  /** Copied files whose source changed (size, mtime, ctime or inode) between the walk and the end of the copy. */
  changed: string[]
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
  plan: CopyPlan,
  early: EarlyHashes,
  signal: AbortSignal,
  onProgress: (bytes: number, total: number) => void,
  linked: Map<string, TreeFile> = new Map(),
): Promise<ManifestResult> {
  const data = path.join(dir, DATA)
  // What was linked here moments ago is the parent's inode as matched: only what rsync wrote is stat'ed.
  const listing = listTree(data)
  const copy: Tree = { ...listing, files: listing.files.map((rel) => linked.get(rel) ?? statFiles(data, [rel])[0]!) }
  const parentHashes = new Map<string, string>()
  if (parentDir !== null) for (const e of parseManifestBytes(await fs.readFile(path.join(parentDir, MANIFEST)))) parentHashes.set(e.path, e.sha256)
  const hashes = new Map<string, string>()
  const toHash: TreeFile[] = []
  const walked = new Map(plan.source.files.map((f) => [f.rel, f]))
  const changed: string[] = []
  let reused = 0
  for (const f of copy.files) {
    const fromParent = parentHashes.get(f.rel)
    if (fromParent !== undefined && plan.parentInodes.get(f.rel) === `${f.dev}:${f.ino}`) {
      hashes.set(f.rel, fromParent)
      reused++
      continue
    }
    const now = lstatSyncOrNull(path.join(src, f.rel))
    const before = walked.get(f.rel)
    // rsync may have read it half old, half new: the copy is hashed as it is, and the operator told.
    if (before && now && !unchanged(before, now)) changed.push(f.rel)
    const seen = early.get(f.rel)
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
    attrs: copy.files.map((f): [string, number, number] => [f.rel, f.mode & 0o7777, f.mtimeMs]).sort((a, b) => compareBytewise(a[0], b[0])),
  }
  const hashedEarly = [...early.values()].reduce((sum, e) => sum + e.file.size, 0)
  return { copy, changed: changed.sort(compareBytewise), entries, catalog, hashedBytes: hashedEarly + total, reused }
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
  /** The newest complete backup of the source, full or incremental: what the live files are checked against for bit rot. */
  referenceDir: string | null
  plan: CopyPlan
}

export interface BuildOutcome {
  files: number; bytes: number; copied_bytes: number; hashed_bytes: number; reused_hashes: number; rsync_exit: number
  /** Files copied afresh because the parent's copy was found bad. */
  fresh: string[]
  changed_during_copy: string[]
  /** Live files the disk changed without a write; the backup holds the reference's copy of each. */
  rotten: RottenFile[]
}

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
    const dest = path.join(partial, DATA)
    // An incremental links here what its parent holds as the source is now, and rsync copies only the rest.
    const linked = plan.match && (await linkUnchanged(src, dest, plan.source, plan.match, ctx.signal, (line) => ctx.progress(line)))
    const early = hashSource(src, linked?.copy ?? plan.toCopy, hashSignal, (b) => ((hashedEarly = b), show()))
    early.catch(() => {})
    const copy = await rsyncCopy(ctx.$, { src, dest, linkDest: null, only: linked?.rsyncList, signal: ctx.signal, onBytes: (b) => ((copied = b), show()) })
    if (copy.error) throw new Error((await diskFull(ctx, req, partial, copy.error)) ?? copy.error)
    if (linked) await copyRootAttributes(src, dest)
    for (const w of copy.warnings) ctx.warn(w)
    if (plan.fresh.length) ctx.warn(`${count(plan.fresh.length, 'file')} the last verification of ${path.basename(parentDir!)} found bad copied afresh from the source: ${summarize(plan.fresh)}`)
    const hashes = await early
    // A full backup is also what an operator makes when the newest backup is damaged: that must not stop it.
    const reference = req.referenceDir && (await rotReference(req.referenceDir).catch((err: Error) => (ctx.warn(`cannot check the source for bit rot against ${path.basename(req.referenceDir!)}: ${err.message}`), null)))
    const rotten = reference ? await keepLastGoodCopies(src, dest, linked?.copy ?? plan.toCopy, hashes, reference, ctx.signal) : []
    // What the source hashed to is no longer what the copy holds.
    for (const r of rotten) if (r.from !== null) hashes.delete(r.path)
    // Each reference copy was hashed to check it; a replaced file's early hash left the map, not the bytes read.
    const sizes = new Map(plan.source.files.map((f) => [f.rel, f.size]))
    const rotBytes = rotten.reduce((sum, r) => sum + sizes.get(r.path)! * (r.from === null ? 1 : 2), 0)
    const hashStart = Date.now()
    const manifest = await buildManifest(partial, src, parentDir, plan, hashes, ctx.signal, (done, total) => ctx.progress(progressLine('hashing the copy:', done, total, hashStart)), linked?.linked)
    if (manifest.changed.length)
      ctx.warn(`${count(manifest.changed.length, 'file')} changed while being copied, so the backup may hold a mix of old and new content: ${summarize(manifest.changed)}; back up again once nothing writes to them`)
    const listed = new Map(manifest.entries.map((e) => [e.path, e.sha256]))
    for (const r of rotten)
      if (listed.get(r.path) !== r.sha256_kept) throw new Error(`the copy of ${r.path} taken from ${r.from ?? 'the source'} hashes to ${listed.get(r.path)}, not ${r.sha256_kept}: the backup disk wrote it wrong`)
    manifest.catalog.source = sourceState(plan.source.files)
    await writeLists(partial, parentDir, manifest)
    const hashedBytes = manifest.hashedBytes + (linked?.hashedBytes ?? 0) + rotBytes
    const totalBytes = manifest.copy.files.reduce((s, f) => s + f.size, 0)
    await writeFirstMeta(partial, {
      format: 1, name: req.name, type: req.type, source: src, started: req.started.toISOString(), finished: new Date().toISOString(),
      files: manifest.copy.files.length, bytes: totalBytes, symlinks: manifest.copy.symlinks.length, parent: parentDir && path.basename(parentDir),
      rsync: { exit_code: copy.exitCode, warnings: copy.warnings }, hashed_bytes: hashedBytes, reused_hashes: manifest.reused, verifications: [],
      changed_during_copy: manifest.changed, source_listed_at: plan.listedAt.toISOString(), ...(rotten.length ? { rotten } : {}),
    })
    ctx.progress('syncing the backup disk')
    await ctx.$`sync --file-system ${partial}`
    await fs.rename(partial, final)
    published = true
    await fsyncDir(path.dirname(final))
    return { files: manifest.copy.files.length, bytes: totalBytes, copied_bytes: copied, hashed_bytes: hashedBytes, reused_hashes: manifest.reused, rsync_exit: copy.exitCode, fresh: plan.fresh, changed_during_copy: manifest.changed, rotten }
  } finally {
    stopHashing.abort()
    if (!published) await removeBackupDir(ctx.settings, partial).catch((err) => ctx.warn(`could not remove ${partial}: ${(err as Error).message}`))
  }
}

/**
 * After a failed copy: when the backup disk is what ran out, says so, with the figures, instead of the
 * broken pipe rsync's sender reports once its receiver died. Measured with the partial copy removed and
 * the source walked again, because the source may have grown since the check before the copy.
 */
async function diskFull(ctx: TaskContext, req: BuildRequest, partial: string, error: string): Promise<string | null> {
  try {
    await removeBackupDir(ctx.settings, partial)
    const short = await spaceShortfall(planCopy(req.src, req.parentDir), path.dirname(req.final))
    if (short) return `the backup disk ${ctx.settings.backupRoot} is full: ${short} (the source grew during the copy); free space there or back up less`
    if (!/No space left on device/.test(error)) return null
    const { bavail, bsize } = await fs.statfs(path.dirname(req.final))
    return `the backup disk ${ctx.settings.backupRoot} filled up during the copy (something else writes there?): ${bavail * bsize} bytes are free now that the partial copy is removed; ${error}`
  } catch {
    // rsync's own message is the best there is; the caller's cleanup reports what it cannot remove.
    return null
  }
}
