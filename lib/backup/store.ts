// The backup store on the backup disk. A backup is complete only under its final name: it is built as
// `<name>.partial` and renamed once its data, manifest and metadata are on disk, so nothing that reads
// the store (status, verify, cleanup, the next incremental) can mistake an interrupted copy for a backup.
import { promises as fs, lstatSync, readdirSync, readlinkSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Settings } from '../infra/config.ts'
import type { TaskContext, TaskResult } from '../core/task.ts'
import { atomicSymlink, atomicWriteFile, decodeName, fsPath, fsyncDir, lstatOrNull } from '../infra/fsx.ts'
import { backupMetaSchema, catalogSchema, checkShape, parseFile } from '../infra/schemas.ts'
import { Lock, LockHeldError, type LockHolder } from '../core/lock.ts'

export type BackupType = 'full' | 'incremental'
const BACKUP_NAME = /^backup_(\d{4})(\d{2})(\d{2})_(\d{2})(\d{2})(\d{2})_(full|incremental)$/
const PARTIAL_SUFFIX = '.partial'

export const backupsDir = (s: Settings) => path.join(s.backupRoot, 'models')
const latestLink = (s: Settings) => path.join(backupsDir(s), 'latest')

/** The files of one backup directory. */
export const DATA = 'data'
export const MANIFEST = 'SHA256SUMS'
export const META = 'backup.json'
/** Sizes of the files and targets of the links under data/, as copied: what verify compares against. */
export const CATALOG = 'files.json'
/** When each file was last hashed by verify, so later runs start with the others. */
export const VERIFY_STATE = 'verify-state.json'

/** `list`: files.json or SHA256SUMS cannot be read, so nothing else could be checked; `path` names it. */
export interface Problem { kind: 'mismatch' | 'missing' | 'size' | 'extra' | 'link' | 'blob-name' | 'unreadable' | 'list'; path: string; detail: string }

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
  problems: Problem[]
  /** Files whose first hash disagreed and whose second agreed with the manifest: a read error, not corruption. */
  transient: string[]
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
}

export interface Catalog {
  files: [string, number][]
  symlinks: [string, string][]
  /** Inode and ctime (ms) of each source file as the backup's walk saw it, for the next incremental (link-unchanged.ts). */
  source?: [string, number, number][]
}

export interface Backup {
  name: string
  dir: string
  type: BackupType
  created: Date
  meta: BackupMeta
}

export interface Store {
  /** Complete backups, oldest first. */
  complete: Backup[]
  /** Directories named like a backup but without readable metadata: never counted, never removed. */
  damaged: { name: string; reason: string }[]
  /** Leftovers of interrupted creates. */
  partials: string[]
  /** What `latest` points at (a name), or null when it is missing or not a link. */
  latest: string | null
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

/** `meta`, the parsed content of `file`, as backup metadata; throws one line naming the file otherwise. */
export const checkMeta = (meta: unknown, file = META): BackupMeta => checkShape(backupMetaSchema, file, meta)

export async function readMeta(dir: string): Promise<BackupMeta> {
  const file = path.join(dir, META)
  return parseFile(backupMetaSchema, file, await fs.readFile(file, 'utf8'))
}

export const metaText = (meta: BackupMeta) => JSON.stringify(meta, null, 2) + '\n'

/** Replaces the metadata of a published backup atomically. */
export const writeMeta = (dir: string, meta: BackupMeta) => atomicWriteFile(path.join(dir, META), metaText(meta))

/** The first metadata of a backup still being made: the one syncfs before it is published makes it durable. */
export const writeFirstMeta = (dir: string, meta: BackupMeta) => fs.writeFile(path.join(dir, META), metaText(meta), { flag: 'wx' })

export async function readCatalog(dir: string): Promise<Catalog> {
  const file = path.join(dir, CATALOG)
  return parseFile(catalogSchema, file, await fs.readFile(file, 'utf8'))
}

/** Why there is no store to work in (initial-setup makes it), or null when there is one. */
export async function storeMissing(s: Settings): Promise<string | null> {
  const root = backupsDir(s)
  return (await lstatOrNull(root))?.isDirectory() ? null : `${root} is not a directory: run initial-setup first (or create-dirs)`
}

/** Reads the store; only real directories directly inside <backup root>/models count. */
export async function scanStore(s: Settings): Promise<Store> {
  const root = backupsDir(s)
  const store: Store = { complete: [], damaged: [], partials: [], latest: null }
  // A missing store is an empty one; an unreadable one is an error, not "no backups".
  const names = (await fs.readdir(root).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return [] as string[]
    throw err
  })).sort()
  for (const name of names) {
    const dir = path.join(root, name)
    if (isPartialName(name)) {
      if ((await lstatOrNull(dir))?.isDirectory()) store.partials.push(dir)
      continue
    }
    const created = createdOf(name)
    if (!created) continue
    if (!(await lstatOrNull(dir))?.isDirectory()) continue
    try {
      const meta = await readMeta(dir)
      store.complete.push({ name, dir, type: meta.type, created, meta })
    } catch (err) {
      store.damaged.push({ name, reason: `${META} unreadable: ${(err as Error).message}` })
    }
  }
  const link = await fs.readlink(latestLink(s)).catch(() => null)
  // Only a link to a directory of this store counts; citadel writes it relative.
  store.latest = link !== null && path.dirname(path.resolve(root, link)) === root ? path.basename(link) : null
  return store
}

/**
 * The backup an operator means by NAME, or by `latest` or nothing: what `latest` points at, or the newest
 * complete backup when `latest` is missing or points at something that is not one.
 */
export function findBackup(store: Store, wanted: string | undefined, active: string): Backup | null {
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
export const latestDamaged = (store: Store) => store.damaged.find((d) => d.name === store.latest) ?? null
/** The complete backups of one source, oldest first: each source is its own chain of fulls and incrementals. */
export const chainOf = (store: Store, source: string): Backup[] => store.complete.filter((b) => b.meta.source === source)

/** A backup of nothing: never a copy of anything worth keeping, whatever its verification says. */
export const isEmptyBackup = (b: Backup) => b.meta.files === 0

/** Why findBackup found nothing, with what there is instead. */
export function noSuchBackup(store: Store, wanted: string | undefined, where: string): string {
  if (!store.complete.length) return `no complete backup in ${where}: make one with citadel backup create`
  const damaged = store.damaged.find((d) => d.name === path.basename(wanted ?? ''))
  const available = `available: ${store.complete.map((b) => b.name).join(', ')}`
  return damaged ? `${damaged.name} is damaged (${damaged.reason}); ${available}` : `no complete backup named ${wanted ?? `latest (${store.latest})`}; ${available}`
}

/** Held in <backup root>/models while a backup is built or the store cleaned: app roots may share one store. */
const STORE_LOCK = '.citadel-store.lock'
const STORE_LOCK_POLL_MS = 2000

/**
 * Runs `work` holding the store lock. Another app root's create or cleanup may hold it for the length of a
 * backup, so a cron job waits for it up to BACKUP_STORE_LOCK_WAIT seconds, then fails naming the holder.
 * Check mode takes no lock: it writes nothing, not even the lock file.
 */
export async function withStoreLock(ctx: TaskContext, work: () => Promise<TaskResult>): Promise<TaskResult> {
  if (ctx.check) return work()
  const { settings } = ctx
  const dir = backupsDir(settings)
  const waitMs = settings.backup.storeLockWait * 1000
  const started = Date.now()
  const command = `citadel ${ctx.task} of ${settings.appRoot}`
  const onStale = (h: LockHolder) => ctx.warn(`took over the backup store lock of pid ${h.pid} (${h.command}), which is gone`)
  let lock: Lock | undefined
  for (let waited = false; !lock; ) {
    try {
      lock = await Lock.acquire(dir, command, onStale, STORE_LOCK)
    } catch (err) {
      if (!(err instanceof LockHeldError)) {
        const code = (err as NodeJS.ErrnoException).code
        // Cleanup is what frees a full disk: a lock file that does not fit must not stop it. Another run
        // cannot be copying onto a disk without room for one small file either.
        if (code !== 'ENOSPC' && code !== 'EDQUOT') return ctx.fail(`cannot take the backup store lock in ${dir}: ${(err as Error).message}`)
        ctx.warn(`the backup disk has no room for the store lock (${code}): working without it`)
        return work()
      }
      const { holder } = err
      const by = `pid ${holder.pid} (${holder.command}), started ${holder.started}`
      if (Date.now() - started >= waitMs)
        return ctx.fail(`the backup store ${dir} is still in use by ${by} after waiting ${settings.backup.storeLockWait}s (BACKUP_STORE_LOCK_WAIT): let that run finish and rerun, or raise the wait`)
      if (!waited) ctx.log('store-lock-wait', { holder })
      waited = true
      ctx.progress(`waiting for the backup store, in use by ${by}`)
      await sleep(STORE_LOCK_POLL_MS, undefined, { signal: ctx.signal })
    }
  }
  try {
    return await work()
  } finally {
    await lock.release()
  }
}

/** Points `latest` at a complete backup by a relative link, in one rename. */
export async function pointLatest(s: Settings, name: string): Promise<void> {
  await atomicSymlink(name, latestLink(s))
  await fsyncDir(backupsDir(s))
}

/**
 * Deletes a backup or a partial one. Refuses anything but a real directory named like a backup directly
 * inside <backup root>/models; fs.rm removes links inside it as links and never follows them.
 */
export async function removeBackupDir(s: Settings, dir: string): Promise<void> {
  const name = path.basename(dir)
  const bare = name.endsWith(PARTIAL_SUFFIX) ? name.slice(0, -PARTIAL_SUFFIX.length) : name
  if (path.dirname(path.resolve(dir)) !== backupsDir(s) || !BACKUP_NAME.test(bare)) throw new Error(`refusing to delete ${dir}: not a backup directory of ${backupsDir(s)}`)
  const st = await lstatOrNull(dir)
  if (!st) return
  if (!st.isDirectory()) throw new Error(`refusing to delete ${dir}: it is ${st.isSymbolicLink() ? 'a symlink' : 'not a directory'}`)
  // Renamed first: a crash halfway through the delete then leaves a partial, which the next create or
  // cleanup finishes removing, never a complete-looking backup with files missing.
  let doomed = dir
  if (bare === name) {
    doomed = path.join(path.dirname(dir), partialName(name))
    await fs.rename(dir, doomed)
    await fsyncDir(path.dirname(dir))
  }
  await fs.rm(doomed, { recursive: true })
}

/**
 * Removes one leftover partial copy (`what` says whose, `where` is its path) with `remove`, and says so only
 * once it is gone; a removal that fails fails the task, naming it. For the local store and the remote one.
 */
export async function removeLeftover(ctx: TaskContext, what: string, where: string, remove: () => Promise<unknown>): Promise<void> {
  try {
    await ctx.apply({ path: where, action: 'remove interrupted backup', before: 'partial copy', after: null }, null, remove)
  } catch (err) {
    throw new Error(`${what} and could not be removed: ${(err as Error).message}; remove it by hand if nothing writes into it any more`, { cause: err })
  }
  ctx.warn(`${what}: ${ctx.check ? 'would remove' : 'removed'} it`)
}

/** Removes what interrupted creates and cleanups left behind, saying so once done; create and cleanup both do. */
export async function removePartials(ctx: TaskContext, store: Store): Promise<void> {
  for (const dir of store.partials)
    await removeLeftover(ctx, `${path.basename(dir)} was left by an interrupted backup or cleanup`, dir, () => removeBackupDir(ctx.settings, dir))
}

export interface TreeFile { rel: string; size: number; mode: number; uid: number; gid: number; ino: number; dev: number; nlink: number; mtimeMs: number; ctimeMs: number }
export interface Listing {
  files: string[]
  symlinks: { rel: string; target: string }[]
  dirs: number
  /** The directories below the root, each before what it holds. */
  dirPaths: string[]
}
export interface Tree extends Omit<Listing, 'files'> { files: TreeFile[] }

/**
 * Every regular file and symlink below `root`, relative paths with '/', from directory entries alone (no
 * stat); `skip` leaves out an entry and, for a directory, all below it. Synchronous: for tens of thousands
 * of entries that is several times faster than the promise API.
 */
export function listTree(root: string, skip: (name: string, isDir: boolean) => boolean = () => false): Listing {
  const listing: Listing = { files: [], symlinks: [], dirs: 0, dirPaths: [] }
  // Names are read as bytes: one that is not UTF-8 must not turn into another name (see decodeName).
  const visit = (dir: string, prefix: string) => {
    for (const entry of readdirSync(fsPath(dir), { withFileTypes: true, encoding: 'buffer' })) {
      const name = decodeName(entry.name)
      const isDir = entry.isDirectory()
      if (skip(name, isDir)) continue
      const rel = prefix + name
      if (isDir) {
        listing.dirs++
        listing.dirPaths.push(rel)
        visit(path.join(dir, name), rel + '/')
      } else if (entry.isSymbolicLink()) listing.symlinks.push({ rel, target: decodeName(readlinkSync(fsPath(path.join(dir, name)), { encoding: 'buffer' })) })
      else if (entry.isFile()) listing.files.push(rel)
    }
  }
  visit(root, '')
  return listing
}

export function statFiles(root: string, rels: string[]): TreeFile[] {
  return rels.map((rel) => {
    const st = lstatSync(fsPath(path.join(root, rel)))
    return { rel, size: st.size, mode: st.mode, uid: st.uid, gid: st.gid, ino: st.ino, dev: st.dev, nlink: st.nlink, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs }
  })
}

/** listTree with every file's stat. */
export function walkTree(root: string, skip?: (name: string, isDir: boolean) => boolean): Tree {
  const listing = listTree(root, skip)
  return { ...listing, files: statFiles(root, listing.files) }
}
