// One restore, from plan to activation, for backup-restore and its drills. The partial directory is
// `.restore-<UTC>.partial` in the target's staging place, so that activation is a rename; an existing model
// directory is renamed into archive/, never deleted, and both renames are journaled, so a failure, an
// interrupt or a kill leaves each model directory the old one or the new verified one.
import { promises as fs } from 'node:fs'
import path from 'node:path'
import type { TaskContext } from '../core/task.ts'
import { describeEntry, fileStamp, fsPath, fsyncDir, lstatOrNull, moveNoReplace } from '../infra/fsx.ts'
import { canExchange, exchange } from '../infra/exchange.ts'
import { bytes, count, progressLine } from '../infra/format.ts'
import { BIG_FILE_BYTES, buildUnits, checkUnit, earlyHasher, eagerFetcher, planRestore, under, unitsTogether, type BadFile, type RestorePlan, type Selection, type UnitPlan } from './restore.ts'
import { parseVerifyState } from './verify.ts'
import { compareBytewise } from './manifest.ts'
import { META, metaText, VERIFY_STATE, type Backup, type BackupLists, type BackupStore, type DataListing, type RestoreRecord, type StoreContents } from './store.ts'

const BLOCK = 4096
const PARTIAL = /^\.restore-\d{8}T\d{6}Z(-\d+)?(-drill)?\.partial$/

/**
 * Where a restore builds and what it replaces: `target` and `partials` on one filesystem; `archive` null
 * under --to and for a drill; `scratch` for a drill's directory, citadel's own and removed after it, whose
 * moves are no change to report or journal.
 */
export interface Destination { target: string; partials: string; archive: string | null; scratch: boolean }

/** Another backup to take a file from when this backup's copy of it is bad. */
export interface Elsewhere { store: BackupStore; backup: Backup; lists: BackupLists }

export interface RestoreRequest {
  store: BackupStore
  backup: Backup
  lists: BackupLists
  listing: DataListing
  sel: Selection
  dest: Destination
  /** Backups that may hold good copies of a file this one holds bad, best first; read only when needed. */
  elsewhere: () => AsyncIterable<Elsewhere>
  drill: boolean
}

export interface RestoreOutcome { plan: RestorePlan; record: RestoreRecord | null; restored: UnitPlan[] }

/** Removes the partial restores an interrupted run left in `dir`: only citadel's own names, never through a link. */
export async function removeLeftoverRestores(ctx: TaskContext, dir: string): Promise<void> {
  for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
    if (!PARTIAL.test(name)) continue
    const at = path.join(dir, name)
    if (!(await lstatOrNull(at))?.isDirectory()) continue
    await ctx.apply({ path: at, action: 'remove interrupted restore', before: 'partial restore', after: null }, null, () => fs.rm(at, { recursive: true }))
    ctx.warn(`${at} was left by an interrupted restore: ${ctx.check ? 'would remove' : 'removed'} it`)
  }
}

/** What a restore writes into its partial: the files it copies, and an entry for everything it builds. */
interface CopySize { fileSizes: number[]; entries: number }

const copyOf = (plan: RestorePlan): CopySize => {
  const todo = plan.units.filter((u) => u.current !== 'same')
  return {
    fileSizes: todo.flatMap((u) => {
      const copying = new Set(u.copy)
      return u.files.filter((f) => copying.has(f.rel)).map((f) => f.size)
    }),
    entries: todo.reduce((sum, u) => sum + u.files.length + u.symlinks.length + u.dirs.length, 0),
  }
}

/** The most a restore of whole units can write: every file of them copied. */
const worstCase = (lists: BackupLists, listing: DataListing, sel: Selection): CopySize => {
  const files = lists.catalog.files.filter(([rel]) => inUnits(sel, rel))
  return { fileSizes: files.map(([, size]) => size), entries: files.length + lists.catalog.symlinks.filter(([rel]) => inUnits(sel, rel)).length + listing.dirs.filter((d) => inUnits(sel, d)).length }
}

const inUnits = (sel: Selection, rel: string) => sel.units.some((u) => under(u)(rel))

/** Why the copy does not fit on the target's disk (one line with both figures), or null. */
async function spaceShortfall(copy: CopySize, dest: Destination, label: string): Promise<string | null> {
  const blocks = copy.fileSizes.reduce((s, size) => s + Math.ceil(size / BLOCK) * BLOCK, 0)
  const needed = blocks + copy.entries * BLOCK
  const withMargin = needed + Math.max(16 << 20, Math.ceil(needed * 0.01))
  const { bavail, bsize } = await fs.statfs(dest.partials)
  const free = bavail * bsize
  return withMargin > free ? `not enough space on ${label} (${dest.partials}): the restore copies ${bytes(needed)} (${needed} bytes; ${withMargin} with a margin), ${free} bytes are free; free space there or restore less (--model, --path)` : null
}

/** Copies good bytes of `bad` files from other backups into the partial; returns what stayed bad and where the rest came from. */
async function fromElsewhere(ctx: TaskContext, req: RestoreRequest, unit: UnitPlan, partial: string, bad: BadFile[]): Promise<{ bad: BadFile[]; found: Record<string, string> }> {
  const sha = new Map(unit.files.map((f) => [f.rel, f.sha256]))
  let open = bad.filter((b) => sha.has(b.rel))
  const found: Record<string, string> = {}
  let n = 0
  for await (const other of req.elsewhere()) {
    const here = open.filter((b) => other.lists.manifest.get(b.rel) === sha.get(b.rel))
    if (!here.length) continue
    const scratch = path.join(partial, `.elsewhere-${n++}`)
    await fs.mkdir(scratch, { mode: 0o700 })
    try {
      ctx.progress(`fetching ${count(here.length, 'file')} from ${other.store.host ? `${other.store.host}:` : ''}${other.backup.name}`)
      const copy = await other.store.fetch(other.backup, here.map((b) => b.rel), scratch, { signal: ctx.signal, onBytes: () => {} })
      if (copy.error) continue
      const fake: UnitPlan = { ...unit, roots: here.map((b) => b.rel), files: unit.files.filter((f) => here.some((b) => b.rel === f.rel)), symlinks: [], dirs: [], copy: here.map((b) => b.rel), reuse: [] }
      const check = await checkUnit(other.lists, fake, scratch, { signal: ctx.signal, onHash: () => {} })
      const stillBad = new Set(check.bad.map((b) => b.rel))
      for (const b of here) {
        if (stillBad.has(b.rel)) continue
        await fs.rename(path.join(scratch, b.rel), path.join(partial, b.rel))
        found[b.rel] = other.store.host ? `${other.store.host}:${other.backup.name}` : other.backup.name
      }
      open = open.filter((b) => !(b.rel in found))
    } finally {
      await fs.rm(scratch, { recursive: true, force: true })
    }
    if (!open.length) break
  }
  return { bad: [...bad.filter((b) => !sha.has(b.rel)), ...open], found }
}

/** A free name in archive/ for the directory a restore replaces: <name>.replaced-<UTC>, then -2, -3, ... */
async function archiveName(archive: string, name: string, stamp: string): Promise<string> {
  for (let n = 1; ; n++) {
    const at = path.join(archive, `${name}.replaced-${stamp}${n === 1 ? '' : `-${n}`}`)
    if (!(await lstatOrNull(at))) return at
  }
}

/**
 * Plans, checks the space, builds and verifies every unit that differs, then activates them one by one.
 * Throws one line when something stands in the way; fails naming every bad file when a file has no good
 * copy anywhere, with the partial removed and the target untouched.
 */
export async function runRestore(ctx: TaskContext, req: RestoreRequest, label: string): Promise<RestoreOutcome> {
  const { store, backup, lists, dest } = req
  const started = Date.now()
  const at = new Date(started).toISOString()
  const stamp = fileStamp(new Date(started))
  let partial = path.join(dest.partials, `.restore-${stamp}.partial`)
  for (let n = 2; await lstatOrNull(partial); n++) partial = path.join(dest.partials, `.restore-${stamp}-${n}.partial`)
  const record: RestoreRecord = { at, what: req.sel.paths ?? req.sel.units, to: dest.target, drill: req.drill, bytes_copied: 0, bytes_reused: 0, files_verified: 0, duration_ms: 0, ok: false, error: null, from_elsewhere: {} }
  const verifiedHere: string[] = []
  let copyStart = 0
  let copyTotal = 0
  const copied = (b: number) => ctx.progress(copyTotal ? progressLine('copying and verifying:', b, copyTotal, copyStart) : `copying while hashing ${dest.target}: ${bytes(b)}`)
  // Files to copy start copying while the rest of the target is still hashed, when even a copy of every
  // file would fit: the plan's exact figure can only be smaller.
  const eagerly = !ctx.check && req.sel.paths === null && !(await spaceShortfall(worstCase(lists, req.listing, req.sel), dest, label))
  const unitFiles = lists.catalog.files.filter(([rel]) => inUnits(req.sel, rel))
  const early = earlyHasher(partial, unitFiles.map(([rel, size]) => ({ rel, size })), ctx.signal)
  const sizes = new Map(unitFiles.map(([rel, size]) => [rel, size]))
  const eager = eagerly ? eagerFetcher(store, backup, partial, () => makePartial(partial, req.listing.dirs.filter((d) => inUnits(req.sel, d))), {
    signal: ctx.signal,
    copied: (b) => {
      copyStart ||= Date.now()
      copied(b)
    },
    fileDone: early.onFileDone,
    copying: early.copying,
    sizes,
  }) : null
  let built = false
  try {
    const hashStart = Date.now()
    const plan = await planRestore(lists, req.listing, req.sel, dest.target, ctx.signal, (done, total) => ctx.progress(progressLine(`hashing ${dest.target}:`, done, total, hashStart)), eager ? (rel) => (sizes.get(rel) ?? 0) >= BIG_FILE_BYTES && eager.add(rel) : undefined)
    const todo = plan.units.filter((u) => u.current !== 'same')
    const short = todo.length && !eager ? await spaceShortfall(copyOf(plan), dest, label) : null
    if (short) throw new Error(short)
    for (const u of plan.units) {
      const what = u.current === 'same' ? 'already as the backup holds it' : `${count(u.copy.length, 'file')} to copy (${bytes(u.copyBytes)}), ${count(u.reuse.length, 'file')} already good (${bytes(u.reuseBytes)})${u.current === 'differs' && dest.archive ? `; the present ${u.name} moves to ${dest.archive}` : ''}`
      ctx.detail(`${u.roots.join(', ')}: ${what}`)
    }
    if (!todo.length || ctx.check) {
      if (!dest.scratch) for (const u of todo) await ctx.apply({ path: path.join(dest.target, u.name), action: 'restore model', before: u.current === 'absent' ? null : 'differs from the backup', after: `${backup.name}: ${bytes(u.copyBytes)} to copy` }, null, async () => {})
      return { plan, record: null, restored: todo }
    }

    built = true
    record.what = req.sel.paths ?? todo.map((u) => u.name)
    if (!eager?.started()) await fs.mkdir(partial, { mode: 0o700 })
    const all = unitsTogether(todo)
    copyTotal = all.copyBytes
    copyStart ||= Date.now()
    await eager?.drain()
    const copiedEarly = eager?.copiedBytes() ?? 0
    await buildUnits(store, backup, todo, dest.target, partial, ctx.$, { signal: ctx.signal, copied: (b) => copied(copiedEarly + b), fileDone: early.onFileDone, copying: early.copying, fetched: eager?.fetched })
    const checkStart = Date.now()
    const checked = await checkUnit(lists, all, partial, { signal: ctx.signal, early: early.hashes, onHash: (done) => ctx.progress(progressLine('verifying:', done, all.copyBytes, checkStart)) })
    ctx.log('restore-verified', { bytes: checked.hashedBytes, hashed_during_copy: checked.hashedEarlyBytes, copy_ms: checkStart - copyStart, check_ms: Date.now() - checkStart, copied_while_hashing: eager?.fetched.size ?? 0 })
    const healed = checked.bad.length ? await fromElsewhere(ctx, req, all, partial, checked.bad) : { bad: [], found: {} }
    for (const [rel, where] of Object.entries(healed.found)) ctx.warn(`${rel}: the copy in ${backup.name} is bad; restored from ${where}, which holds the same bytes`)
    Object.assign(record.from_elsewhere, healed.found)
    verifiedHere.push(...all.copy.filter((rel) => !checked.bad.some((b) => b.rel === rel)))
    record.bytes_copied = all.copyBytes
    record.bytes_reused = all.reuseBytes
    record.files_verified = all.copy.length + all.reuse.length
    if (healed.bad.length) throw new Error(`${count(healed.bad.length, 'file')} of ${backup.name} cannot be restored as its manifest says, and no other backup holds good copies: ${healed.bad.map((b) => `${b.rel} (${b.detail})`).join('; ')}; nothing was changed in ${dest.target}`)
    ctx.progress('syncing the restored files')
    await early.writebacks()
    await ctx.$`sync --file-system ${partial}`
    const exchangeable = !dest.scratch && dest.archive !== null && (await canExchange(partial))
    for (const unit of todo) await activate(ctx, unit, partial, dest, stamp, backup, exchangeable)
    await fsyncDir(dest.target)
    record.ok = true
    return { plan, record, restored: todo }
  } catch (err) {
    record.error = (err as Error).message
    throw err
  } finally {
    // A copy started while hashing may still run when the plan failed: it stops on the same signal or ends, and only then is its partial removed.
    await eager?.drain().catch(() => {})
    record.duration_ms = Date.now() - started
    // Only what is left: a unit already moved into place is the target's now, and the journal knows it.
    if (await lstatOrNull(partial)) await fs.rm(partial, { recursive: true, force: true }).catch((err) => ctx.warn(`could not remove ${partial}: ${(err as Error).message}`))
    if (built && !ctx.signal.aborted) await ctx.bookkeep(`the restore record of ${backup.name}`, () => recordRestore(store, backup, lists, record, verifiedHere)).catch((err) => ctx.warn(`the restore was not recorded in ${backup.name}: ${(err as Error).message}`))
  }
}

/** The partial with every directory of the units, private until the copy gives them the backup's modes. */
async function makePartial(partial: string, dirs: string[]): Promise<void> {
  await fs.mkdir(partial, { mode: 0o700 })
  for (const dir of dirs) await fs.mkdir(fsPath(path.join(partial, dir)), { recursive: true, mode: 0o700 })
}

/**
 * Puts the verified unit in place. What stands there goes to archive/ (when it is the active tree): where the
 * filesystem can, the two are exchanged in one step and the old one then moves from the partial to archive/,
 * so the name never stands empty; elsewhere the old one moves aside first, and a kill between the two renames
 * leaves the name empty until the next run's rollback.
 */
async function activate(ctx: TaskContext, unit: UnitPlan, partial: string, dest: Destination, stamp: string, backup: Backup, exchangeable: boolean): Promise<void> {
  const at = path.join(dest.target, unit.name)
  const built = path.join(partial, unit.name)
  const st = await lstatOrNull(at)
  if (st && !dest.archive) throw new Error(`${at} appeared during the restore; nothing of it was changed`)
  if (dest.scratch) return moveNoReplace(built, at)
  const summary = `${backup.name}: ${bytes(unit.copyBytes)} copied, ${bytes(unit.reuseBytes)} already good`
  if (st && dest.archive && exchangeable) {
    const aside = await archiveName(dest.archive, unit.name, stamp)
    const ino = (await fs.lstat(fsPath(built))).ino
    await ctx.apply({ path: at, action: 'restore model', before: 'archived', after: summary }, { op: 'exchange-back', path: at, other: built, ino }, async () => {
      if (!(await exchange(at, built))) throw new Error(`${at} and ${built} could not be exchanged, though the filesystem did it a moment before`)
    })
    await ctx.apply({ path: at, action: 'archive replaced model', before: describeEntry(st), after: aside }, { op: 'move-back', from: aside, to: built }, () => moveNoReplace(built, aside))
    return
  }
  if (st && dest.archive) {
    const aside = await archiveName(dest.archive, unit.name, stamp)
    await ctx.apply({ path: at, action: 'archive replaced model', before: describeEntry(st), after: aside }, { op: 'move-back', from: aside, to: at }, () => moveNoReplace(at, aside))
  }
  await ctx.apply({ path: at, action: 'restore model', before: st ? 'archived' : null, after: summary }, { op: 'move-back', from: at, to: built }, () => moveNoReplace(built, at))
}

/** Appends the record to the backup's metadata; the files hashed right count as verified now. */
async function recordRestore(store: BackupStore, backup: Backup, lists: BackupLists, record: RestoreRecord, verified: string[]): Promise<void> {
  await store.replaceFile(backup, META, metaText({ ...backup.meta, restores: [...(backup.meta.restores ?? []), record] }))
  if (!verified.length) return
  const state = parseVerifyState(lists.state, () => {}, lists.stateFile)
  for (const rel of verified) state[rel] = record.at
  await store.replaceFile(backup, VERIFY_STATE, JSON.stringify(state) + '\n')
}

/** Where a drill goes: scratch of citadel's own under `staging`, named so a killed drill's leftover is removed as a partial restore. */
export const drillScratch = (staging: string, at = new Date()) => path.join(staging, `.restore-${fileStamp(at)}-drill.partial`)

/**
 * What a drill restores: the --path given, or the one unit of `sel` drilled longest ago (never drilled
 * first) across every backup of `chain`, so that drills rotate through the models week by week.
 */
export function drillSelection(sel: Selection, chain: Backup[]): Selection {
  if (sel.paths) return sel
  const last = new Map<string, string>()
  for (const b of chain) for (const r of b.meta.restores ?? []) if (r.drill && r.ok) for (const w of r.what) if ((last.get(w) ?? '') < r.at) last.set(w, r.at)
  const [pick] = [...sel.units].sort((a, b) => (last.get(a) ?? '').localeCompare(last.get(b) ?? '') || compareBytewise(a, b))
  return { units: pick === undefined ? [] : [pick], paths: null }
}

/**
 * Other complete backups that may hold a good copy of a file: the same store's, newest first, then those of
 * `other` (the remote store for a local restore, the local one for a remote restore) when there is one and
 * it can be read. Lists are read one backup at a time, only as far as they are needed.
 */
export async function* otherCopies(store: BackupStore, contents: StoreContents, backup: Backup, other: () => Promise<{ store: BackupStore; contents: StoreContents } | null>): AsyncIterable<Elsewhere> {
  const listed = async function* (s: BackupStore, c: StoreContents) {
    for (const b of [...c.complete].reverse()) {
      if (s === store && b.name === backup.name) continue
      const lists = await s.readLists(b)
      if (!('message' in lists)) yield { store: s, backup: b, lists }
    }
  }
  yield* listed(store, contents)
  const far = await other()
  if (far) yield* listed(far.store, far.contents)
}
