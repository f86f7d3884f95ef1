// The model directories on the model disk, wherever they are in their life (downloads/ → staging/ →
// active/ → archive/), with what an operator asks before moving or deleting one: which alias serves it,
// how big it is, whether its last verification passed, whether a backup holds the same files, and whether a
// running process has it open. Also what model remove shares with list: its removal (renamed aside first,
// so a kill never leaves half a model under its real name) and the leftovers of a killed removal.
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { z } from 'zod'
import { localStore, scanStore } from '../backup/local-store.ts'
import { CATALOG, chainOf, isEmptyBackup, type Backup, type BackupLists, type Catalog } from '../backup/store.ts'
import { processRuns } from '../core/lock.ts'
import type { Settings } from '../infra/config.ts'
import { bytes, count, summarize } from '../infra/format.ts'
import { fsyncDir, isTempSiblingName, lstatOrNull, tempSibling } from '../infra/fsx.ts'
import { catalogSchema, parseFile } from '../infra/schemas.ts'
import { walkTree, type TreeFile } from '../infra/tree.ts'
import type { Shell } from 'zx/core'
import { hashRecordFile, readHashRecord } from './hashes.ts'
import { PLACES, placeDir, type Place } from './places.ts'
import { archiveDir, readModelsState, stagingDir, type ArchivedVersion, type ModelsState } from './promote.ts'
import type { Holder } from './usage.ts'

/** What model fetch names a download it has not finished: downloads/<name>.partial. */
const PARTIAL = '.partial'

/** A model directory's name as an argument: one path component, so it can never reach outside its place. */
export const modelDir = (where: string) =>
  z.string().refine((v) => v !== '' && v !== '.' && v !== '..' && !v.includes('/') && !v.includes('\0'), `expected the name of a directory in ${where} (one path component: no "/", not "." or "..")`)

// A removal renames the directory to this tempSibling purpose before deleting it.
const REMOVING = 'removing'

/**
 * Deletes the model directory `dir`, which the caller found to be a real directory: renamed to a hidden
 * `.<name>.citadel-removing-<pid>-<hex>` sibling first, so a kill leaves that leftover rather than a
 * model with files missing under its real name. fs.rm removes links inside as links, never following them.
 */
export async function removeModelDir(dir: string): Promise<void> {
  const st = await lstatOrNull(dir)
  if (!st?.isDirectory()) throw new Error(`refusing to delete ${dir}: it is ${st?.isSymbolicLink() ? 'a symlink' : 'not a directory'}`)
  const doomed = tempSibling(dir, REMOVING)
  await fs.rename(dir, doomed)
  await fsyncDir(path.dirname(dir))
  await fs.rm(doomed, { recursive: true })
}

/** What killed removals left in archive/ and staging/: leftovers whose process is gone (a running remove's are its own). */
export async function removalLeftovers(s: Settings): Promise<string[]> {
  const found: string[] = []
  for (const dir of [archiveDir(s), stagingDir(s)]) {
    for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
      if (!isTempSiblingName(name, REMOVING)) continue
      const pid = Number(/-(\d+)-[0-9a-f]{8}$/.exec(name)![1])
      if (!processRuns(pid) && (await lstatOrNull(path.join(dir, name)))?.isDirectory()) found.push(path.join(dir, name))
    }
  }
  return found
}

/** Bytes deleting these files frees: a file hard-linked from outside them (a blob of the HF cache, a backup) frees nothing. */
export function freedBytes(files: readonly TreeFile[]): number {
  const links = new Map<string, { size: number; nlink: number; seen: number }>()
  for (const f of files) {
    const key = `${f.dev}:${f.ino}`
    const known = links.get(key)
    if (known) known.seen++
    else links.set(key, { size: f.size, nlink: f.nlink, seen: 1 })
  }
  let freed = 0
  for (const l of links.values()) if (l.seen >= l.nlink) freed += l.size
  return freed
}

export interface LastVerification {
  /** When a file of it last hashed as recorded. */
  at: string
  /** Whether every file now there is recorded, with the size it has now. */
  ok: boolean
  detail: string
}

/** The last verification as the record tells it, or null when the directory was never verified. */
async function lastVerification(file: string, files: readonly TreeFile[]): Promise<LastVerification | null> {
  let unreadable: string | null = null
  const record = await readHashRecord(file, (message) => (unreadable = message))
  const recorded = record.files
  if (unreadable !== null) return { at: '', ok: false, detail: unreadable }
  const run = record.last_run
  if (run && !run.ok) return { at: run.at, ok: false, detail: `failed: ${summarize(run.problems.map((p) => `${p.path}: ${p.detail}`))}` }
  // model verify writes no record for a directory of which nothing hashed well.
  if (!Object.keys(recorded).length) return null
  const at = run?.at ?? Object.values(recorded).reduce((newest, r) => (r.verified > newest ? r.verified : newest), '')
  const now = new Map(files.map((f) => [f.rel, f.size]))
  const unrecorded = files.filter((f) => recorded[f.rel]?.size !== f.size).length
  const gone = Object.keys(recorded).filter((rel) => !now.has(rel)).length
  if (!unrecorded && !gone) return { at, ok: true, detail: `all ${count(files.length, 'file')} as recorded` }
  const parts = [unrecorded ? `${count(unrecorded, 'file')} unrecorded or resized` : '', gone ? `${count(gone, 'recorded file')} gone` : ''].filter(Boolean)
  return { at, ok: false, detail: `${parts.join(', ')} since: run citadel model verify` }
}

/** The backups of the active models, newest first, and the files of each, by model directory, read once when first asked. */
export class BackupCatalogs {
  private readonly byDir = new Map<string, Map<string, [string, number][]> | null>()
  private constructor(readonly backups: Backup[]) {}

  static async load(s: Settings): Promise<BackupCatalogs> {
    const contents = await scanStore(s)
    return new BackupCatalogs(chainOf(contents, s.modelsActive).filter((b) => !isEmptyBackup(b)).reverse())
  }

  /** data/'s files of `b` grouped by their top directory, as [path inside it, size]; null when its catalog cannot be read. */
  private async filesByDir(b: Backup): Promise<Map<string, [string, number][]> | null> {
    if (!this.byDir.has(b.name)) {
      const file = path.join(b.dir, CATALOG)
      const catalog: Catalog | null = await fs.readFile(file, 'utf8').then((text) => parseFile(catalogSchema, file, text)).catch(() => null)
      const grouped = catalog && new Map<string, [string, number][]>()
      for (const [rel, size] of catalog?.files ?? []) {
        const slash = rel.indexOf('/')
        if (slash < 0) continue
        const top = rel.slice(0, slash)
        if (!grouped!.has(top)) grouped!.set(top, [])
        grouped!.get(top)!.push([rel.slice(slash + 1), size])
      }
      this.byDir.set(b.name, grouped)
    }
    return this.byDir.get(b.name)!
  }

  /**
   * The newest backup whose data/<name> lists exactly `files` with their sizes (no hashing), passing
   * `accept`: a backup of the directory as it is now.
   */
  async holding(name: string, files: readonly TreeFile[], accept: (b: Backup) => boolean = () => true): Promise<Backup | null> {
    // An empty directory is in every backup and in none: nothing vouches for it.
    if (!files.length) return null
    const wanted = new Map(files.map((f) => [f.rel, f.size]))
    for (const b of this.backups) {
      if (!accept(b)) continue
      const held = (await this.filesByDir(b))?.get(name) ?? []
      if (held.length === wanted.size && held.every(([rel, size]) => wanted.get(rel) === size)) return b
    }
    return null
  }
}

/** Whether a backup's last verification passed. */
export const verifiedOk = (b: Backup) => b.meta.verifications.at(-1)?.ok === true

/** The manifest hashes of data/<name>/… in `backup`, keyed by the path inside the model directory; or why they cannot be read. */
export async function manifestOf(s: Settings, $: Shell, backup: Backup, name: string): Promise<Map<string, string> | string> {
  const lists: BackupLists | { file: string; message: string } = await localStore(s, $).readLists(backup)
  if ('message' in lists) return lists.message
  const prefix = `${name}/`
  return new Map([...lists.manifest].filter(([rel]) => rel.startsWith(prefix)).map(([rel, sha]) => [rel.slice(prefix.length), sha]))
}

export interface ModelInfo {
  name: string
  place: Place
  path: string
  /** A download model fetch has not finished (downloads/<name>.partial). */
  partial: boolean
  /** The aliases MODEL_REGISTRY gives this directory (only one in active/ can be served). */
  aliases: string[]
  /** For a directory of archive/: the alias it served before, as promote and rollback recorded it. */
  archived: { alias: string; dir: string; at: string; bad: boolean } | null
  files: number
  bytes: number
  /** Bytes deleting it would free (hard links shared with other directories free nothing). */
  freeable_bytes: number
  last_verification: LastVerification | null
  /** The newest complete backup of the active models holding the same files and sizes, and whether its last verification passed. */
  backup: { name: string; verified: boolean } | null
  holders: Holder[]
}

/**
 * The earlier version of an alias that the directory `name` in `place` is, from the record promote and rollback
 * keep: one in archive/, or one promote left in active/ (archive/ on another filesystem).
 */
export function archivedVersion(state: ModelsState, name: string, place: Place = 'archive'): { alias: string; version: ArchivedVersion } | null {
  for (const [alias, { archived }] of Object.entries(state.aliases)) {
    const version = archived.find((v) => (place === 'archive' ? v.archive === name : place === 'active' && v.archive === null && v.dir === name))
    if (version) return { alias, version }
  }
  return null
}

/** The name a directory had in active/, which is its name under a backup's data/. */
export const activeName = (state: ModelsState, place: Place, name: string) => (place === 'archive' ? (archivedVersion(state, name)?.version.dir ?? name) : name)

/** Every directory in the four places, without the leftovers of removals and other hidden entries. */
export async function modelDirs(s: Settings): Promise<{ name: string; place: Place; path: string }[]> {
  const found: { name: string; place: Place; path: string }[] = []
  for (const place of PLACES) {
    const dir = placeDir(s, place)
    for (const name of (await fs.readdir(dir).catch(() => [] as string[])).sort()) {
      if (name.startsWith('.')) continue
      if ((await lstatOrNull(path.join(dir, name)))?.isDirectory()) found.push({ name, place, path: path.join(dir, name) })
    }
  }
  return found
}

/** What model list shows of every model directory. `holders` comes from usage.ts, keyed by path. */
export async function inventory(s: Settings, holders: Map<string, Holder[]>, found: { name: string; place: Place; path: string }[]): Promise<ModelInfo[]> {
  const state = await readModelsState(s)
  const catalogs = await BackupCatalogs.load(s)
  const infos: ModelInfo[] = []
  for (const d of found) {
    const files = walkTree(d.path).files
    const archived = archivedVersion(state, d.name, d.place)
    const holding = await catalogs.holding(activeName(state, d.place, d.name), files)
    infos.push({
      ...d,
      partial: d.place === 'downloads' && d.name.endsWith(PARTIAL),
      aliases: s.models.filter((m) => m.dir === d.name && d.place === 'active').map((m) => m.alias),
      archived: archived && { alias: archived.alias, dir: archived.version.dir, at: archived.version.archived_at, bad: archived.version.bad },
      files: files.length,
      bytes: files.reduce((sum, f) => sum + f.size, 0),
      freeable_bytes: freedBytes(files),
      last_verification: await lastVerification(hashRecordFile(s, d.name), files),
      backup: holding && { name: holding.name, verified: verifiedOk(holding) },
      holders: holders.get(d.path) ?? [],
    })
  }
  return infos
}

/** An archived version past MODEL_ARCHIVE_KEEP for its alias, which model remove would free. */
export interface Surplus { alias: string; archive: string; bad: boolean; archived_at: string }

/**
 * The archived versions of each alias beyond MODEL_ARCHIVE_KEEP, still in archive/: those a rollback never
 * takes (marked bad) first, then the oldest. Only offered: nothing removes them unasked.
 */
export async function archiveSurplus(s: Settings, state: ModelsState): Promise<Surplus[]> {
  const surplus: Surplus[] = []
  for (const [alias, { archived }] of Object.entries(state.aliases)) {
    const present: ArchivedVersion[] = []
    for (const v of archived) if (v.archive !== null && (await lstatOrNull(path.join(archiveDir(s), v.archive)))?.isDirectory()) present.push(v)
    const extra = present.length - s.modelArchiveKeep
    if (extra <= 0) continue
    const byAge = (a: ArchivedVersion, b: ArchivedVersion) => a.archived_at.localeCompare(b.archived_at)
    const order = [...present.filter((v) => v.bad).sort(byAge), ...present.filter((v) => !v.bad).sort(byAge)]
    for (const v of order.slice(0, extra)) surplus.push({ alias, archive: v.archive!, bad: v.bad, archived_at: v.archived_at })
  }
  return surplus
}

/** One line offering the removal of a surplus version, with what it would free. */
export async function surplusOffer(s: Settings, v: Surplus): Promise<string> {
  const files = walkTree(path.join(archiveDir(s), v.archive)).files
  return `archive/ holds more than MODEL_ARCHIVE_KEEP=${s.modelArchiveKeep} versions of ${v.alias}: \`citadel model remove ${v.archive}\` would free ${bytes(freedBytes(files))} (${v.bad ? 'marked bad' : `archived ${v.archived_at}`})`
}
