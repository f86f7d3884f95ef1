// What a backup store is, wherever it lives: on the backup disk of this host (local-store.ts) or on
// BACKUP_REMOTE over ssh (ssh-store.ts). A backup is complete only under its final name: it is built as
// `<name>.partial` and renamed once its data, manifest and metadata are on disk, so nothing that reads a
// store (status, verify, cleanup, the next incremental) can mistake an interrupted copy for a backup.
// verify, retention and status work on the BackupStore interface, so both stores follow one set of rules.
import path from 'node:path'
import type { TaskContext, TaskResult } from '../core/task.ts'
import { backupMetaSchema, checkShape } from '../infra/schemas.ts'
import type { CopyResult } from './rsync.ts'

export type BackupType = 'full' | 'incremental'
const BACKUP_NAME = /^backup_(\d{4})(\d{2})(\d{2})_(\d{2})(\d{2})(\d{2})_(full|incremental)$/
const PARTIAL_SUFFIX = '.partial'

/** The files of one backup directory. */
export const DATA = 'data'
export const MANIFEST = 'SHA256SUMS'
export const META = 'backup.json'
/** Sizes of the files and targets of the links under data/, as copied: what verify compares against. */
export const CATALOG = 'files.json'
/** When each file was last hashed by verify, so later runs start with the others. */
export const VERIFY_STATE = 'verify-state.json'

/**
 * One thing a verification found wrong with a backup. `list`: files.json or SHA256SUMS cannot be read, so
 * nothing else could be checked; `path` names it.
 */
export interface VerifyProblem { kind: 'mismatch' | 'missing' | 'size' | 'extra' | 'link' | 'blob-name' | 'unreadable' | 'list'; path: string; detail: string }

export interface Verification {
  at: string
  rate: number
  seed: number
  /** true when the sample came from --seed alone, ignoring which files were verified recently. */
  seeded: boolean
  files_checked: number
  files_hashed: number
  bytes_hashed: number
  ok: boolean
  problems: VerifyProblem[]
  /** Files whose first hash disagreed and whose second agreed with the manifest: a read error, not corruption. */
  transient: string[]
  /** Files of `problems` that backup verify --repair replaced with a good copy, and where it came from; absent when none. */
  healed?: { path: string; from: string }[]
}

export interface BackupMeta {
  format: 1
  name: string
  type: BackupType
  source: string
  started: string
  finished: string
  files: number
  bytes: number
  symlinks: number
  /** The backup an incremental hard-links unchanged files to. */
  parent: string | null
  rsync: { exit_code: number; warnings: string[] }
  /** Bytes read to build the manifest; entries of files shared with the parent are taken from its manifest. */
  hashed_bytes: number
  reused_hashes: number
  verifications: Verification[]
  /** Files whose source changed while they were copied; absent in backups made before it was recorded. */
  changed_during_copy?: string[]
  /** When the walk of the source began; absent in backups made before it was recorded. */
  source_listed_at?: string
  /** Every restore (and drill) made from this backup, oldest first; absent until the first. */
  restores?: RestoreRecord[]
}

export interface RestoreRecord {
  at: string
  /** The model directories (top-level entries of data/) restored, or the paths under data/ with --path. */
  what: string[]
  /** Where they went: the active models directory, --to DIR, or a drill's scratch directory. */
  to: string
  drill: boolean
  bytes_copied: number
  bytes_reused: number
  files_verified: number
  duration_ms: number
  ok: boolean
  /** Why it failed, or null. */
  error: string | null
  /** Files whose copy in this backup was bad and came from another backup instead: path → that backup. */
  from_elsewhere: Record<string, string>
}

export interface Catalog {
  files: [string, number][]
  symlinks: [string, string][]
  /** Permission bits and mtime (ms) of each file, as copied; absent in backups made before it was recorded. */
  attrs?: [string, number, number][]
  /** Inode and ctime (ms) of each source file as the backup's walk saw it, for the next incremental (link-unchanged.ts). */
  source?: [string, number, number][]
}

export interface Backup {
  name: string
  /** Its directory in the store: a local path, or a path on the remote host. */
  dir: string
  type: BackupType
  created: Date
  meta: BackupMeta
}

/** What a scan of a store found. */
export interface StoreContents {
  /** Complete backups, oldest first. */
  complete: Backup[]
  /** Directories named like a backup but without readable metadata: never counted, never removed. */
  damaged: { name: string; reason: string }[]
  /** Directories of the leftovers of interrupted creates, sends and deletes. */
  partials: string[]
  /** What `latest` points at (a name), or null when it is missing or not a link. */
  latest: string | null
}

/** The manifest (path → sha256), the catalog and the verify state's text (null: none yet) of a backup. */
export interface BackupLists { catalog: Catalog; manifest: Map<string, string>; state: string | null; stateFile: string }

/** A list of a backup that cannot be read: its file name, and one line naming where it is and why. */
export interface UnreadableList { file: string; message: string }

/** What the data/ directory of a backup holds, from one listing. */
export interface DataListing {
  files: string[]
  /** The directories, each before what it holds. */
  dirs: string[]
  /** path → target */
  symlinks: Map<string, string>
  /** Entries that are neither a directory, a regular file nor a link. */
  others: string[]
  /** What is at `rel`, for a problem's detail: nothing, a directory, a file of N bytes, a symlink... */
  describe(rel: string): Promise<string>
  /** The sizes of files of this listing, in the order asked. */
  sizes(rels: string[]): Promise<number[]>
}

/** A file to hash and the hash the manifest records for it. */
export interface HashCheck { rel: string; size: number; sha256: string }

/** How a file hashed: as the manifest says, otherwise, or not at all; `bytesRead` null when the store cannot tell. */
export interface HashVerdict { verdict: 'match' | 'differs' | 'unreadable'; detail: string; bytesRead: number | null }

export interface Disk { free_bytes: number; total_bytes: number }

/**
 * A store of backups: <backup root>/models on this host, or BACKUP_REMOTE over ssh. Every method works on
 * names and directories of this store only, and throws one line naming the store when it cannot do its part.
 */
export interface BackupStore {
  /** Where the store is, as messages name it: a directory here, user@host:/dir/models over ssh. */
  readonly label: string
  /** The host the store is on over ssh; null for the store on this host's backup disk. */
  readonly host: string | null
  /** Where `name` (a backup, a partial one, or latest) is, for a change record. */
  pathOf(name: string): string
  /** Why there is no store to work in (initial-setup makes the local one), or null when there is one. */
  missing(): Promise<string | null>
  /** Complete, damaged and partial backups, and where latest points; an unreadable store throws, a missing one is empty. */
  scan(): Promise<StoreContents>
  /** Free and total bytes of the store's disk, and what all its backups take there when the store can tell. */
  space(): Promise<Disk & { used_bytes: number | null }>
  /**
   * The hard-link accounting of these backups: the bytes only the backups `names` hold, which removing them
   * frees; null when the store cannot tell (over ssh citadel does not walk the inodes).
   */
  heldOnlyBy(complete: Backup[]): ((names: string[]) => number) | null
  readLists(backup: Backup): Promise<BackupLists | UnreadableList>
  listData(backup: Backup): Promise<DataListing>
  /** Hashes `files` of the backup's data/ on the store's own host and compares each with its manifest hash. */
  hashCheck(backup: Backup, files: HashCheck[], opts: { signal: AbortSignal; onProgress: (bytesDone: number) => void }): Promise<HashVerdict[]>
  /**
   * Copies `rels` (paths under data/: directories without what they hold, links as links, files whole)
   * from the backup's data/ into `dest` on this host, with rsync, attributes and hard links kept; never
   * writes into the store.
   */
  fetch(backup: Backup, rels: string[], dest: string, opts: { signal: AbortSignal; onBytes: (bytes: number) => void; onFileDone?: (rel: string) => void }): Promise<CopyResult>
  /** Replaces one file of a published backup (its metadata, its verify state) in one rename. */
  replaceFile(backup: Backup, file: string, content: string): Promise<void>
  /** Deletes a backup or a partial one: renamed to .partial first, links inside removed as links. */
  remove(name: string): Promise<void>
  /** Points latest at `name`, in one rename. */
  pointLatest(name: string): Promise<void>
  /** Runs `work` while no other citadel changes the store, as far as the store can promise that. */
  exclusive(ctx: TaskContext, work: () => Promise<TaskResult>): Promise<TaskResult>
}

export function backupName(date: Date, type: BackupType): string {
  const iso = date.toISOString()
  return `backup_${iso.slice(0, 10).replaceAll('-', '')}_${iso.slice(11, 19).replaceAll(':', '')}_${type}`
}

export function createdOf(name: string): Date | null {
  const m = BACKUP_NAME.exec(name)
  return m ? new Date(Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!)) : null
}

export const partialName = (name: string) => name + PARTIAL_SUFFIX

/** A directory an interrupted create (or delete) left: a backup's name with .partial after it. */
export const isPartialName = (name: string) => name.endsWith(PARTIAL_SUFFIX) && BACKUP_NAME.test(name.slice(0, -PARTIAL_SUFFIX.length))

/** The name of a backup without .partial, or null when `name` is neither a backup's nor a partial one's. */
export function bareName(name: string): string | null {
  const bare = name.endsWith(PARTIAL_SUFFIX) ? name.slice(0, -PARTIAL_SUFFIX.length) : name
  return BACKUP_NAME.test(bare) ? bare : null
}

/** `meta`, the parsed content of `file`, as backup metadata; throws one line naming the file otherwise. */
export const checkMeta = (meta: unknown, file = META): BackupMeta => checkShape(backupMetaSchema, file, meta)

export const metaText = (meta: BackupMeta) => JSON.stringify(meta, null, 2) + '\n'

/** A backup as the store names it in messages: its name, with the host over ssh. */
export const shownName = (store: BackupStore, name: string) => (store.host ? `${store.host}:${name}` : name)

/**
 * The backup an operator means by NAME, or by `latest` or nothing: what `latest` points at, or the newest
 * complete backup when `latest` is missing or points at something that is not one.
 */
export function findBackup(store: StoreContents, wanted: string | undefined, active: string): Backup | null {
  if (wanted !== undefined && wanted !== 'latest') return store.complete.find((b) => b.name === path.basename(wanted)) ?? null
  // `latest` is the active models' chain: without it, a newer backup of another source is not what is meant.
  return store.complete.find((b) => b.name === store.latest) ?? chainOf(store, active).at(-1) ?? store.complete.at(-1) ?? null
}

/** A backup dated more than this ahead of now was made while the clock was wrong. */
const CLOCK_SLACK_MS = 3_600_000

/** Complete backups (oldest first) dated up to now, and those dated in the future. */
export function byClock(complete: Backup[], now: Date): { dated: Backup[]; ahead: Backup[] } {
  const ahead = (b: Backup) => b.created.getTime() > now.getTime() + CLOCK_SLACK_MS
  return { dated: complete.filter((b) => !ahead(b)), ahead: complete.filter(ahead) }
}

/** The damaged backup `latest` points at, if it does: findBackup would silently fall back to an older one. */
export const latestDamaged = (store: StoreContents) => store.damaged.find((d) => d.name === store.latest) ?? null
/** The complete backups of one source, oldest first: each source is its own chain of fulls and incrementals. */
export const chainOf = (store: StoreContents, source: string): Backup[] => store.complete.filter((b) => b.meta.source === source)

/** A backup of nothing: never a copy of anything worth keeping, whatever its verification says. */
export const isEmptyBackup = (b: Backup) => b.meta.files === 0

/** Why findBackup found nothing, with what there is instead. */
export function noSuchBackup(store: StoreContents, wanted: string | undefined, where: string): string {
  if (!store.complete.length) return `no complete backup in ${where}: make one with citadel backup create`
  const damaged = store.damaged.find((d) => d.name === path.basename(wanted ?? ''))
  const available = `available: ${store.complete.map((b) => b.name).join(', ')}`
  return damaged ? `${damaged.name} is damaged (${damaged.reason}); ${available}` : `no complete backup named ${wanted ?? `latest (${store.latest})`}; ${available}`
}

