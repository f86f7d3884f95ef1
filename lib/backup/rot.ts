// Bit rot of the source: a byte the model disk changed without anyone writing the file. Every write sets
// a file's ctime and nothing sets it back (see link-unchanged.ts), so a file with the inode, ctime and size
// a previous backup's walk saw settled, but bytes that no longer hash as that backup's manifest says, was
// changed by the disk. Copied as it is now, the damage would become the newest backup's truth, and a
// restore from it would find the live file "already as the backup holds it"; once retention removes the
// older backups, the good bytes would be gone.
import { createReadStream, createWriteStream, promises as fs } from 'node:fs'
import path from 'node:path'
import { pipeline } from 'node:stream/promises'
import { fsPath, lstatSyncOrNull } from '../infra/fsx.ts'
import { hashFiles } from '../infra/hashing.ts'
import type { TreeFile } from '../infra/tree.ts'
import { DATA } from './store.ts'

/** A previous complete backup of the same source, as far as the rot check needs it. */
export interface RotReference {
  dir: string
  /** [inode, ctime] of each source file its walk saw settled (settledState). */
  settled: Map<string, [number, number]>
  /** Files its last verification found bad: its copy of them is no reference. */
  suspect: Set<string>
  /** Its manifest: what each file hashed to. */
  expected: Map<string, string>
}

/** As backup.json records it: the hash of the live file now, and the hash of the copy the backup holds. */
export interface RottenFile {
  path: string
  sha256_now: string
  sha256_kept: string
  /** The backup the kept copy came from; null when its copy was damaged too, so the backup holds the live bytes. */
  from: string | null
}

/** Hashes of the source taken during the copy, with the walk's view of each file (build.ts EarlyHashes). */
type SourceHashes = Map<string, { hash: string; file: TreeFile }>

const sameState = (a: TreeFile, b: { size: number; mtimeMs: number; ctimeMs: number; ino: number }) =>
  a.size === b.size && a.mtimeMs === b.mtimeMs && a.ctimeMs === b.ctimeMs && a.ino === b.ino

/**
 * Finds the rotten files among `copied` (the source files rsync copied into `data`) and puts the reference's
 * copy of each in place of the rotten bytes, in the copy's own inode (so a hard-link group the copy made
 * stays one) with its mtime kept. A reference copy that no longer hashes as its manifest says is not used:
 * the backup then holds the live bytes, and the file is still reported. The caller hashes the copy again
 * for the manifest, as every copied file is.
 */
export async function keepLastGoodCopies(src: string, data: string, copied: TreeFile[], early: SourceHashes, ref: RotReference, signal: AbortSignal): Promise<RottenFile[]> {
  const refData = path.join(ref.dir, DATA)
  const rotten: { f: TreeFile; now: string; kept: string }[] = []
  for (const f of copied) {
    const then = ref.settled.get(f.rel)
    const kept = ref.expected.get(f.rel)
    const seen = early.get(f.rel)
    if (!then || then[0] !== f.ino || then[1] !== f.ctimeMs || kept === undefined || !seen || seen.hash === kept || ref.suspect.has(f.rel)) continue
    // Changed since the walk (which the early hash saw): written, so not rot; the warning about files changed during the copy covers it.
    const now = lstatSyncOrNull(path.join(src, f.rel))
    if (!now || !sameState(seen.file, now)) continue
    if (lstatSyncOrNull(path.join(refData, f.rel))?.size !== f.size) continue
    rotten.push({ f, now: seen.hash, kept })
  }
  if (!rotten.length) return []
  const refHashes = await hashFiles(rotten.map(({ f }) => ({ file: path.join(refData, f.rel), size: f.size })), { signal })
  const from = path.basename(ref.dir)
  const result: RottenFile[] = []
  for (const [i, r] of rotten.entries()) {
    const good = refHashes[i]!.sha256 === r.kept
    if (good) await overwriteInPlace(path.join(refData, r.f.rel), path.join(data, r.f.rel))
    result.push({ path: r.f.rel, sha256_now: r.now, sha256_kept: good ? r.kept : r.now, from: good ? from : null })
  }
  return result
}

async function overwriteInPlace(from: string, to: string): Promise<void> {
  const before = await fs.lstat(fsPath(to))
  await pipeline(createReadStream(fsPath(from)), createWriteStream(fsPath(to), { flags: 'r+' }))
  await fs.utimes(fsPath(to), before.atimeMs / 1000, before.mtimeMs / 1000)
}
