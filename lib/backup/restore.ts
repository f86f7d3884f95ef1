// Getting models back out of a backup. Nothing of the target changes while a restore is built: each model
// directory is assembled in a partial directory on the target's own filesystem, from the files of the
// target that already hash as the manifest says (hard-linked, not copied again) and from the backup (copied
// with rsync, never in place, never writing into the store), then every byte is hashed and every size, mode,
// mtime and link target checked against the backup's lists. Only then is it activated, by rename
// (restore-run.ts). A file whose copy in this backup is bad is taken from another backup that lists
// the same bytes, or the restore fails naming it.
import { promises as fs, lstatSync, readdirSync, readlinkSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import path from 'node:path'
import type { Shell } from 'zx/core'
import { decodeName, fsPath, octal } from '../infra/fsx.ts'
import { hashFiles, tailHash, type Tail } from '../infra/hashing.ts'
import { listTree, statFiles } from '../infra/tree.ts'
import { compareBytewise } from './manifest.ts'
import type { Backup, BackupLists, BackupStore, DataListing } from './store.ts'

/** What the restore is asked for: whole model directories, or paths under data/ (--path). */
export interface Selection { units: string[]; paths: string[] | null }

/** One top-level entry of data/ (a model directory, usually) and what restoring it takes. */
export interface UnitPlan {
  name: string
  /** false under --path: only `paths` come from the backup, the rest of the target's entry stays as it is. */
  whole: boolean
  /** The paths under data/ taken from the backup: the unit itself, or the --path entries inside it. */
  roots: string[]
  files: { rel: string; size: number; sha256: string }[]
  symlinks: [string, string][]
  dirs: string[]
  /** Files of the target that already hash as the manifest says: hard-linked into the partial. */
  reuse: string[]
  /** Files to copy from the backup. */
  copy: string[]
  copyBytes: number
  reuseBytes: number
  /** What stands at the target now: nothing, the same as the backup holds, or something else (archived on activation). */
  current: 'absent' | 'same' | 'differs'
}

export interface RestorePlan { units: UnitPlan[]; hashedBytes: number }

/** Why a selection does not fit the backup (one line naming the alias or path), or null. */
export function unknownSelection(listing: DataListing, sel: Selection, shown: string): string | null {
  const entries = new Set([...listing.files, ...listing.dirs, ...listing.symlinks.keys()])
  const missingUnit = sel.units.find((u) => !entries.has(u))
  if (missingUnit !== undefined) return `${shown} holds no ${missingUnit} under data/; it holds ${[...new Set([...entries].map((e) => e.split('/')[0]!))].sort(compareBytewise).join(', ') || 'nothing'}`
  const missingPath = sel.paths?.find((p) => !entries.has(p))
  return missingPath === undefined ? null : `${shown} holds no ${missingPath} under data/; give a file or directory relative to data/ (citadel backup status lists the backups)`
}

/** The top-level entries of the backup's data/: what a restore without --model or --path brings back. */
export const topLevel = (listing: DataListing) => [...new Set([...listing.files, ...listing.dirs, ...listing.symlinks.keys()].map((e) => e.split('/')[0]!))].sort(compareBytewise)

export const under = (root: string) => (rel: string) => rel === root || rel.startsWith(root + '/')

/** What stands at `rel` under `base` and below it, with paths relative to `base`. */
export interface Entries { files: string[]; symlinks: Map<string, string>; dirs: string[]; others: string[] }

export function entriesAt(base: string, rels: string[]): Entries {
  const found: Entries = { files: [], symlinks: new Map(), dirs: [], others: [] }
  for (const rel of rels) {
    const st = lstatSync(fsPath(path.join(base, rel)), { throwIfNoEntry: false })
    if (!st) continue
    if (st.isDirectory()) {
      const inside = listTree(path.join(base, rel))
      found.dirs.push(rel, ...inside.dirPaths.map((d) => `${rel}/${d}`))
      found.files.push(...inside.files.map((f) => `${rel}/${f}`))
      for (const l of inside.symlinks) found.symlinks.set(`${rel}/${l.rel}`, l.target)
      found.others.push(...inside.others.map((o) => `${rel}/${o}`))
    } else if (st.isSymbolicLink()) found.symlinks.set(rel, decodeName(readlinkSync(fsPath(path.join(base, rel)), { encoding: 'buffer' })))
    else if (st.isFile()) found.files.push(rel)
    else found.others.push(rel)
  }
  return found
}

const sameLinks = (a: Map<string, string>, b: [string, string][]) => a.size === b.length && b.every(([rel, t]) => a.get(rel) === t)
const sameSet = (a: string[], b: string[]) => a.length === b.length && new Set([...a, ...b]).size === a.length

/**
 * Plans the restore of `sel` from the backup into `target`: hashes, on the worker pool, every file of the
 * target whose size matches the backup's, so a file already right is linked, not copied again. `onCopy`
 * hears of each file to copy as soon as that is known, so the copy can start while the hashing goes on:
 * first those the target lacks or holds at another size, then each that hashes wrong.
 */
export async function planRestore(lists: BackupLists, listing: DataListing, sel: Selection, target: string, signal: AbortSignal, onHash: (done: number, total: number) => void, onCopy?: (rel: string) => void): Promise<RestorePlan> {
  const units = sel.units.map((name) => {
    const roots = sel.paths ? sel.paths.filter(under(name)) : [name]
    const inScope = (rel: string) => roots.some((r) => under(r)(rel))
    return {
      name,
      whole: !sel.paths || roots.includes(name),
      roots,
      files: lists.catalog.files.filter(([rel]) => inScope(rel)).map(([rel, size]) => ({ rel, size, sha256: lists.manifest.get(rel) ?? '' })),
      symlinks: lists.catalog.symlinks.filter(([rel]) => inScope(rel)),
      dirs: listing.dirs.filter(inScope),
      now: entriesAt(target, roots),
    }
  })
  const candidates = units.flatMap((u) => {
    const there = new Set(u.now.files)
    return u.files.filter((f) => {
      const candidate = there.has(f.rel) && f.sha256 !== '' && statFiles(target, [f.rel])[0]!.size === f.size
      if (!candidate) onCopy?.(f.rel)
      return candidate
    })
  })
  const total = candidates.reduce((sum, f) => sum + f.size, 0)
  const outcomes = await hashFiles(candidates.map((f) => ({ file: path.join(target, f.rel), size: f.size })), {
    signal,
    onProgress: (done) => onHash(done, total),
    onOutcome: (i, o) => o.sha256 !== candidates[i]!.sha256 && onCopy?.(candidates[i]!.rel),
  })
  const good = new Set(candidates.filter((f, i) => outcomes[i]!.sha256 === f.sha256).map((f) => f.rel))
  const planned = units.map(({ now, ...u }): UnitPlan => {
    const reuse = u.files.filter((f) => good.has(f.rel))
    const copy = u.files.filter((f) => !good.has(f.rel))
    const nothing = !now.files.length && !now.symlinks.size && !now.dirs.length && !now.others.length
    const same = !copy.length && sameSet(now.files, u.files.map((f) => f.rel)) && sameLinks(now.symlinks, u.symlinks) && sameSet(now.dirs, u.dirs) && !now.others.length
    return {
      ...u,
      reuse: reuse.map((f) => f.rel),
      copy: copy.map((f) => f.rel),
      copyBytes: copy.reduce((s, f) => s + f.size, 0),
      reuseBytes: reuse.reduce((s, f) => s + f.size, 0),
      current: same ? 'same' : nothing && !lstatSync(fsPath(path.join(target, u.name)), { throwIfNoEntry: false }) ? 'absent' : 'differs',
    }
  })
  return { units: planned, hashedBytes: total }
}

/** A file big enough that copying or hashing it alone is worth an rsync start or a worker's message of its own. */
export const BIG_FILE_BYTES = 8 << 20

export interface BuildProgress {
  signal: AbortSignal
  copied: (bytes: number) => void
  fileDone?: (rel: string) => void
  /** Told which files a copy is about to write; returns the call for the copy's end (earlyHasher's copying). */
  copying?: (rels: string[]) => () => void
}

/** A file hashed as soon as the copy put it in place, with the state it was hashed in. */
export interface EarlyHash { sha256: string | null; size: number; mtimeMs: number; ino: number; whileCopied: boolean }

/** Above this many directories to look into, files are hashed after their copy, not during it. */
const MAX_TAILED_DIRS = 16

/**
 * Hashes the big files of a copy while rsync writes them, so the verification overlaps the copy instead of
 * following it. `copying(rels)` is called as a copy of `rels` starts and returns the call for its end:
 * while it runs, the directories of its big files are looked into every few milliseconds for rsync's
 * temporary file (`.NAME.XXXXXX`, beside the final name), which is then hashed as it grows, on a thread of
 * its own (tailHash). A file the look missed, or whose hash cannot be tied to the very file now in place
 * (same inode, every byte read), is hashed once `onFileDone` reports it, one at a time. Small files are left
 * to the check after, where a batch costs less than a worker each. Each hashed file is then written to the
 * disk while the copy goes on, so the sync before activation has only the last files left to write
 * (`writebacks` waits for them).
 */
export function earlyHasher(partial: string, files: { rel: string; size: number }[], signal: AbortSignal) {
  const big = new Map(files.filter((f) => f.size >= BIG_FILE_BYTES).map((f) => [f.rel, f.size]))
  const hashes = new Map<string, Promise<EarlyHash | null>>()
  const tails = new Map<string, Tail>()
  const awaited = new Set<string>()
  const flushing: Promise<void>[] = []
  let queue: Promise<unknown> = Promise.resolve()

  const temporaries = (dir: string) => {
    let names: Buffer[] = []
    try {
      names = readdirSync(fsPath(path.join(partial, dir)), { encoding: 'buffer' })
    } catch {
      // Not made yet: rsync makes it as it comes to it.
    }
    return names.map(decodeName).filter((name) => name.length > 8 && name.startsWith('.') && name.at(-7) === '.').map((name) => ({ name, rel: path.join(dir, name.slice(1, -7)) }))
  }
  const copying = (rels: string[]) => {
    const mine = rels.filter((rel) => big.has(rel) && !hashes.has(rel) && !tails.has(rel))
    const dirs = [...new Set(mine.map((rel) => path.dirname(rel)))]
    if (!mine.length || dirs.length > MAX_TAILED_DIRS) return () => {}
    for (const rel of mine) awaited.add(rel)
    // Left by a copy killed earlier, into a partial this run goes on with: never the file being written.
    const stale = new Set(dirs.flatMap((dir) => temporaries(dir).map((t) => path.join(dir, t.name))))
    let ended = false
    let current: Tail | null = null
    void (async () => {
      while (!ended && !signal.aborted && mine.some((rel) => awaited.has(rel))) {
        const found = dirs.flatMap((dir) => temporaries(dir).map((t) => ({ ...t, dir }))).find((t) => awaited.has(t.rel) && !stale.has(path.join(t.dir, t.name)))
        if (!found) {
          await sleep(4)
          continue
        }
        awaited.delete(found.rel)
        current = tailHash(path.join(partial, found.dir, found.name), path.join(partial, found.rel), signal)
        tails.set(found.rel, current)
        await current.outcome.catch(() => {})
        current = null
      }
    })()
    return () => {
      ended = true
      current?.stop()
      for (const rel of mine) awaited.delete(rel)
    }
  }

  const onFileDone = (rel: string) => {
    const size = big.get(rel)
    awaited.delete(rel)
    if (size === undefined || hashes.has(rel) || signal.aborted) return
    const file = path.join(partial, rel)
    const tail = tails.get(rel)
    const job = queue.then(async () => {
      const st = lstatSync(fsPath(file), { throwIfNoEntry: false })
      if (!st?.isFile() || st.size !== size) return null
      const tailed = await tail?.outcome.catch(() => null)
      const whileCopied = Boolean(tailed?.sha256 && tailed.ino === st.ino && tailed.bytesRead === size)
      const sha256 = whileCopied ? tailed!.sha256 : (await hashFiles([{ file, size }], { threads: 1, signal }))[0]!.sha256
      flushing.push(writeBack(file))
      return { sha256, size: st.size, mtimeMs: st.mtimeMs, ino: st.ino, whileCopied }
    }).catch(() => null)
    queue = job
    hashes.set(rel, job)
  }
  return { copying, onFileDone, hashes, writebacks: async () => void (await Promise.all(flushing)) }
}

/** Starts writing a file's bytes to the disk; a failure is left to the sync after, which reports it. */
async function writeBack(file: string): Promise<void> {
  const handle = await fs.open(fsPath(file), 'r').catch(() => null)
  await handle?.datasync().catch(() => {})
  await handle?.close().catch(() => {})
}

/** A file that could not be restored as the manifest says, and why. */
export interface BadFile { rel: string; detail: string }

/**
 * Builds `units` inside `partial` (which exists, on the target's filesystem): under --path, first the
 * target's entry as it is (files hard-linked, links and directories copied); then the backup's entries of
 * each unit, reused files linked from the target and the rest fetched from the store, in one copy for all
 * of them (a copy per unit costs an rsync start per model directory, which dominates with many small ones).
 */
export async function buildUnits(store: BackupStore, backup: Backup, units: UnitPlan[], target: string, partial: string, $: Shell, opts: BuildProgress & { fetched?: ReadonlySet<string> }): Promise<void> {
  for (const unit of units) {
    const here = path.join(target, unit.name)
    if (!unit.whole && (await fs.lstat(fsPath(here)).catch(() => null))) {
      // cp -al: a new tree of links to the target's own files, so the archived copy keeps every byte.
      await $({ signal: opts.signal })`cp -a --link --no-target-directory -- ${here} ${path.join(partial, unit.name)}`
      for (const root of unit.roots) await fs.rm(fsPath(path.join(partial, root)), { recursive: true, force: true })
    }
    for (const dir of unit.dirs) await fs.mkdir(fsPath(path.join(partial, dir)), { recursive: true, mode: 0o700 })
    for (const root of unit.roots) await fs.mkdir(fsPath(path.dirname(path.join(partial, root))), { recursive: true, mode: 0o755 })
    for (const rel of unit.reuse) await fs.link(fsPath(path.join(target, rel)), fsPath(path.join(partial, rel)))
  }
  // Directories are listed too so that rsync gives them the backup's modes and times once their files are in.
  const fetchList = units.flatMap((unit) => [...unit.dirs, ...unit.symlinks.map(([rel]) => rel), ...unit.copy.filter((rel) => !opts.fetched?.has(rel))])
  if (!fetchList.length) return
  const ended = opts.copying?.(fetchList)
  const result = await store.fetch(backup, fetchList, partial, { signal: opts.signal, onBytes: opts.copied, onFileDone: opts.fileDone }).finally(() => ended?.())
  if (result.error) throw new Error(`copying ${units.map((u) => u.name).join(', ')} from ${backup.name} failed: ${result.error}`)
}

/**
 * Fetches files into `partial` while the plan is still hashing: each file named by `add` is copied from the
 * store, in as few rsync runs as the pace of the hashing allows, one at a time so that none writes beside
 * another. Meant for big files: a small one costs less in the one copy after the plan than an rsync start.
 * Only for whole units (under --path the partial first takes a linked copy of the target's entry).
 * `prepare` makes the partial and its directories before the first copy.
 */
export function eagerFetcher(store: BackupStore, backup: Backup, partial: string, prepare: () => Promise<void>, opts: BuildProgress & { sizes: Map<string, number> }) {
  const fetched = new Set<string>()
  let queue: string[] = []
  let running: Promise<void> | null = null
  let prepared: Promise<void> | null = null
  let error: Error | null = null
  let copiedBefore = 0
  const pump = () => {
    if (running || error || !queue.length || opts.signal.aborted) return
    const rels = queue
    queue = []
    for (const rel of rels) fetched.add(rel)
    running = (async () => {
      prepared ??= prepare()
      await prepared
      const ended = opts.copying?.(rels)
      const result = await store.fetch(backup, rels, partial, { signal: opts.signal, onBytes: (b) => opts.copied(copiedBefore + b), onFileDone: opts.fileDone }).finally(() => ended?.())
      copiedBefore += rels.reduce((sum, rel) => sum + (opts.sizes.get(rel) ?? 0), 0)
      if (result.error) throw new Error(`copying from ${backup.name} failed: ${result.error}`)
    })().catch((err: Error) => void (error ??= err)).finally(() => {
      running = null
      pump()
    })
  }
  return {
    fetched,
    /** Bytes of the copies that ended, for progress across them and the copy after the plan. */
    copiedBytes: () => copiedBefore,
    /** Whether anything was asked for, so the partial exists (or is being made). */
    started: () => prepared !== null || running !== null,
    add(rel: string) {
      queue.push(rel)
      pump()
    },
    /** Waits for the copies asked for so far; throws the first copy's failure. */
    async drain() {
      while (running) await running
      if (error) throw error
    },
  }
}

/** Several units as one, for building and checking them together. */
export function unitsTogether(units: UnitPlan[]): UnitPlan {
  const sum = (pick: (u: UnitPlan) => number) => units.reduce((s, u) => s + pick(u), 0)
  return {
    name: units.map((u) => u.name).join(', '),
    whole: units.every((u) => u.whole),
    roots: units.flatMap((u) => u.roots),
    files: units.flatMap((u) => u.files),
    symlinks: units.flatMap((u) => u.symlinks),
    dirs: units.flatMap((u) => u.dirs),
    reuse: units.flatMap((u) => u.reuse),
    copy: units.flatMap((u) => u.copy),
    copyBytes: sum((u) => u.copyBytes),
    reuseBytes: sum((u) => u.reuseBytes),
    current: units.every((u) => u.current === 'same') ? 'same' : 'differs',
  }
}

/**
 * Checks `unit` as built in `partial` against the backup's lists: every file there, of the recorded size,
 * mode and mtime, the copied ones hashing as the manifest says; every link with its target; nothing else.
 * Returns what is wrong; `hashed` gets the bytes hashed.
 */
export async function checkUnit(lists: BackupLists, unit: UnitPlan, partial: string, opts: { signal: AbortSignal; onHash: (done: number) => void; early?: Map<string, Promise<EarlyHash | null>> }): Promise<{ bad: BadFile[]; hashedBytes: number; hashedEarlyBytes: number }> {
  const bad: BadFile[] = []
  const attrs = new Map((lists.catalog.attrs ?? []).map(([rel, mode, mtimeMs]) => [rel, { mode, mtimeMs }]))
  const built = entriesAt(partial, unit.roots)
  const present = new Map(statFiles(partial, built.files).map((f) => [f.rel, f]))
  const copied = new Set(unit.copy)
  for (const f of unit.files) {
    const got = present.get(f.rel)
    const want = attrs.get(f.rel)
    if (!got) bad.push({ rel: f.rel, detail: 'missing from the restored copy' })
    else if (got.size !== f.size) bad.push({ rel: f.rel, detail: `${got.size} bytes, the backup recorded ${f.size}` })
    // A reused file is the target's own inode: its bytes are what counts, its times are its own.
    else if (want && copied.has(f.rel) && ((got.mode & 0o7777) !== want.mode || Math.abs(got.mtimeMs - want.mtimeMs) >= 1))
      bad.push({ rel: f.rel, detail: `mode ${octal(got.mode)}, mtime ${new Date(got.mtimeMs).toISOString()}; the backup recorded ${octal(want.mode)}, ${new Date(want.mtimeMs).toISOString()}` })
  }
  const wanted = new Set(unit.files.map((f) => f.rel))
  for (const rel of built.files) if (!wanted.has(rel)) bad.push({ rel, detail: 'a file the backup does not hold' })
  const links = new Map(unit.symlinks)
  for (const [rel, target] of unit.symlinks) {
    const found = built.symlinks.get(rel)
    if (found !== target) bad.push({ rel, detail: `expected a link to ${target}, found ${found === undefined ? 'none' : `a link to ${found}`}` })
  }
  for (const rel of built.symlinks.keys()) if (!links.has(rel)) bad.push({ rel, detail: 'a link the backup does not hold' })
  for (const rel of built.others) bad.push({ rel, detail: 'a special file the backup does not hold' })

  const toHash = unit.files.filter((f) => copied.has(f.rel) && present.get(f.rel)?.size === f.size)
  // An early hash counts only for the very file still there: same inode, size and mtime as when it was read.
  const hashedEarly = new Map<string, string>()
  for (const f of toHash) {
    const e = await opts.early?.get(f.rel)
    const now = present.get(f.rel)!
    if (e?.sha256 && e.ino === now.ino && e.size === now.size && e.mtimeMs === now.mtimeMs) hashedEarly.set(f.rel, e.sha256)
  }
  const late = toHash.filter((f) => !hashedEarly.has(f.rel))
  const outcomes = await hashFiles(late.map((f) => ({ file: path.join(partial, f.rel), size: f.size })), { signal: opts.signal, onProgress: opts.onHash })
  const verdict = (f: { rel: string; sha256: string }, sha256: string | null, error: string | null) => {
    if (sha256 === null) bad.push({ rel: f.rel, detail: `unreadable: ${error}` })
    else if (sha256 !== f.sha256) bad.push({ rel: f.rel, detail: `hashes to ${sha256}, SHA256SUMS says ${f.sha256}` })
  }
  outcomes.forEach((o, i) => verdict(late[i]!, o.sha256, o.error))
  for (const f of toHash) if (hashedEarly.has(f.rel)) verdict(f, hashedEarly.get(f.rel)!, null)
  // One line per file, the strongest first: its bytes.
  const byFile = new Map<string, BadFile>()
  for (const b of bad) if (!byFile.has(b.rel) || b.detail.startsWith('hashes to')) byFile.set(b.rel, b)
  return { bad: [...byFile.values()].sort((a, b) => compareBytewise(a.rel, b.rel)), hashedBytes: toHash.reduce((s, f) => s + f.size, 0), hashedEarlyBytes: toHash.reduce((s, f) => s + (hashedEarly.has(f.rel) ? f.size : 0), 0) }
}
