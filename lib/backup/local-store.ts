// The backup store on this host's backup disk, <backup root>/models: scanned from its directories, written
// by rename, guarded by a lock that app roots sharing the disk all take.
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Shell } from 'zx/core'
import type { Settings } from '../infra/config.ts'
import type { TaskContext, TaskResult } from '../core/task.ts'
import { atomicSymlink, atomicWriteFile, describeEntry, fsyncDir, lstatOrNull, readFileOrNull } from '../infra/fsx.ts'
import { hashFiles } from '../infra/hashing.ts'
import { backupMetaSchema, catalogSchema, parseFile } from '../infra/schemas.ts'
import { listTree, statFiles } from '../infra/tree.ts'
import { Lock, LockHeldError, type LockHolder } from '../core/lock.ts'
import { parseManifestBytes } from './manifest.ts'
import { rsyncCopy } from './rsync.ts'
import { bytesHeldOnlyBy, sharing } from './sharing.ts'
import { bareName, CATALOG, createdOf, DATA, isPartialName, MANIFEST, META, metaText, partialName, VERIFY_STATE, type BackupMeta, type BackupStore, type Catalog, type StoreContents } from './store.ts'

export const backupsDir = (s: Settings) => path.join(s.backupRoot, 'models')
const latestLink = (s: Settings) => path.join(backupsDir(s), 'latest')

async function readMeta(dir: string): Promise<BackupMeta> {
  const file = path.join(dir, META)
  return parseFile(backupMetaSchema, file, await fs.readFile(file, 'utf8'))
}

/** The first metadata of a backup still being made: the one syncfs before it is published makes it durable. */
export const writeFirstMeta = (dir: string, meta: BackupMeta) => fs.writeFile(path.join(dir, META), metaText(meta), { flag: 'wx' })

async function readCatalog(dir: string): Promise<Catalog> {
  const file = path.join(dir, CATALOG)
  return parseFile(catalogSchema, file, await fs.readFile(file, 'utf8'))
}

/** Why there is no store to work in (initial-setup makes it), or null when there is one. */
export async function storeMissing(s: Settings): Promise<string | null> {
  const root = backupsDir(s)
  return (await lstatOrNull(root))?.isDirectory() ? null : `${root} is not a directory: run initial-setup first (or create-dirs)`
}

/** Reads the store; only real directories directly inside <backup root>/models count. */
export async function scanStore(s: Settings): Promise<StoreContents> {
  const root = backupsDir(s)
  const store: StoreContents = { complete: [], damaged: [], partials: [], latest: null }
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


/** Held in <backup root>/models while a backup is built or the store cleaned: app roots may share one store. */
const STORE_LOCK = '.citadel-store.lock'
const STORE_LOCK_POLL_MS = 2000

/**
 * Runs `work` holding the store lock. Another app root's create or cleanup may hold it for the length of a
 * backup, so a cron job waits for it up to BACKUP_STORE_LOCK_WAIT seconds, then fails naming the holder.
 * Check mode takes no lock: it writes nothing, not even the lock file.
 */
async function withStoreLock(ctx: TaskContext, work: () => Promise<TaskResult>): Promise<TaskResult> {
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
  const bare = bareName(name)
  if (path.dirname(path.resolve(dir)) !== backupsDir(s) || bare === null) throw new Error(`refusing to delete ${dir}: not a backup directory of ${backupsDir(s)}`)
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


/** The sha256 of each file, read here, against the manifest's. */
async function hashHere(data: string, files: { rel: string; size: number; sha256: string }[], opts: { signal: AbortSignal; onProgress: (bytesDone: number) => void }) {
  const outcomes = await hashFiles(files.map((f) => ({ file: path.join(data, f.rel), size: f.size })), opts)
  return outcomes.map((o, i) => {
    const expected = files[i]!.sha256
    if (o.sha256 === null) return { verdict: 'unreadable' as const, detail: o.error ?? 'read failed', bytesRead: o.bytesRead }
    if (o.sha256 !== expected) return { verdict: 'differs' as const, detail: `hashes to ${o.sha256}, ${MANIFEST} says ${expected}`, bytesRead: o.bytesRead }
    return { verdict: 'match' as const, detail: '', bytesRead: o.bytesRead }
  })
}

/** The store on this host's backup disk; `$` runs rsync for fetch. */
export function localStore(settings: Settings, $: Shell): BackupStore {
  const root = backupsDir(settings)
  return {
    label: root,
    host: null,
    pathOf: (name) => path.join(root, name),
    missing: () => storeMissing(settings),
    scan: () => scanStore(settings),
    async space() {
      const { bavail, blocks, bsize } = await fs.statfs(root)
      return { free_bytes: bavail * bsize, total_bytes: blocks * bsize, used_bytes: null }
    },
    heldOnlyBy(complete) {
      const shared = sharing(complete)
      return (names) => bytesHeldOnlyBy(shared, names)
    },
    async readLists(backup) {
      let file = path.join(backup.dir, CATALOG)
      try {
        const catalog = await readCatalog(backup.dir)
        file = path.join(backup.dir, MANIFEST)
        const manifest = new Map(parseManifestBytes(await fs.readFile(file)).map((e) => [e.path, e.sha256]))
        const stateFile = path.join(backup.dir, VERIFY_STATE)
        return { catalog, manifest, state: await readFileOrNull(stateFile), stateFile }
      } catch (err) {
        const message = (err as Error).message
        return { file: path.basename(file), message: message.includes(file) ? message : `${file}: ${message}` }
      }
    },
    async listData(backup) {
      const data = path.join(backup.dir, DATA)
      const listing = listTree(data)
      return {
        files: listing.files,
        dirs: listing.dirPaths,
        symlinks: new Map(listing.symlinks.map((l) => [l.rel, l.target])),
        others: listing.others,
        describe: async (rel) => describeEntry(await lstatOrNull(path.join(data, rel))),
        sizes: async (rels) => statFiles(data, rels).map((f) => f.size),
      }
    },
    hashCheck: (backup, files, opts) => hashHere(path.join(backup.dir, DATA), files, opts),
    fetch: (backup, rels, dest, { signal, onBytes, onFileDone }) => rsyncCopy($, { src: path.join(backup.dir, DATA), dest, linkDest: null, excludes: [], only: rels, signal, onBytes, onFileDone }),
    replaceFile: (backup, file, content) => atomicWriteFile(path.join(backup.dir, file), content),
    remove: (name) => removeBackupDir(settings, path.join(root, name)),
    pointLatest: (name) => pointLatest(settings, name),
    exclusive: withStoreLock,
  }
}
