// Heals the files of a local backup that a verification found rotten, cut short, unreadable or missing.
// Hard-linked increments share inodes, so one rotten file on the backup disk is rotten in every backup that
// links it. The good bytes (from the active models, another backup's separate copy, or BACKUP_REMOTE, each
// hashed before it is trusted) are written once, as a new inode beside the bad path, hashed again and renamed
// over it; every other path that holds the rotten inode gets the same good inode by a hard link renamed over
// it. Nothing is written in place and no path is missing for a moment; a kill leaves only temporary siblings
// of a recognisable name, which the next repair removes.
import { createReadStream, createWriteStream, promises as fs, type Stats } from 'node:fs'
import path from 'node:path'
import { pipeline } from 'node:stream/promises'
import type { RemoteSettings } from '../infra/config.ts'
import type { TaskContext } from '../core/task.ts'
import { describeEntry, fsPath, fsyncDir, isTempSiblingName, lstatOrNull, showName, tempSibling } from '../infra/fsx.ts'
import { hashFiles } from '../infra/hashing.ts'
import { listTree, walkTree } from '../infra/tree.ts'
import { rsyncCopy } from './rsync.ts'
import { remoteHost, rsyncRsh, sshStore } from './ssh-store.ts'
import { DATA, MANIFEST, type Backup, type BackupLists, type BackupStore, type StoreContents, type VerifyProblem } from './store.ts'

/** What good bytes can mend; a stray, a wrong link or a blob named for other content is not bytes gone bad. */
const HEALABLE = new Set<VerifyProblem['kind']>(['mismatch', 'size', 'unreadable', 'missing'])

/** The purposes of the temporary siblings: a good copy staged beside the bad path, a directory a remote copy arrives in. */
const STAGED = 'heal'
const FETCHED = 'fetch'

export interface Healed {
  /** The path in the verified backup's data/. */
  path: string
  /** Where the good bytes came from: the active models, a backup's name, or host:name on BACKUP_REMOTE. */
  from: string
  /** Every backup/path that now holds the good inode. */
  copies: string[]
}
export interface Unhealed { path: string; why: string }
export interface Repair {
  healed: Healed[]
  unhealed: Unhealed[]
  /** Temporary files and directories an interrupted repair had left, now removed. */
  leftovers: string[]
}

const ACTIVE_COPY = 'the active models'

/**
 * Removes what an interrupted repair left in the data/ at `data` (a listing of it may be given): staged
 * files and fetch directories, by their names, each only as the kind that purpose creates.
 */
export async function removeLeftovers(ctx: TaskContext, data: string, listing: { files: string[]; dirPaths: string[] } = listTree(data)): Promise<string[]> {
  const named = (purpose: string) => (rel: string) => isTempSiblingName(path.posix.basename(rel), purpose)
  const dirs = listing.dirPaths.filter(named(FETCHED))
  const files = listing.files.filter(named(STAGED)).filter((rel) => !dirs.some((d) => rel.startsWith(d + '/')))
  const removed: string[] = []
  for (const rel of [...dirs, ...files]) {
    const p = path.join(data, rel)
    const st = await lstatOrNull(p)
    if (!(dirs.includes(rel) ? st?.isDirectory() : st?.isFile())) continue
    await ctx.apply({ path: p, action: 'remove interrupted heal', before: describeEntry(st), after: null }, null, () => fs.rm(fsPath(p), { recursive: true }))
    removed.push(p)
  }
  return removed
}

interface Target {
  rel: string
  problem: VerifyProblem
  sha256: string
  size: number
  file: string
  /** The bad file; null when it is missing. */
  bad: Stats | null
}

/** A copy that hashed as the manifest says: `stage` writes it into a new file. */
interface GoodCopy { from: string; attrs: Stats | null; stage: (tmp: string) => Promise<void> }

const inodeOf = (st: Stats) => `${st.dev}:${st.ino}`

async function sha256Of(file: string, size: number, signal: AbortSignal): Promise<string | null> {
  const [outcome] = await hashFiles([{ file, size }], { signal, threads: 1 })
  return outcome!.sha256
}

/** Copies the bytes through this process, never by reflink: the good copy must not share blocks with its source. */
async function copyBytes(src: string, tmp: string): Promise<void> {
  await pipeline(createReadStream(fsPath(src)), createWriteStream(fsPath(tmp), { flags: 'wx', mode: 0o600 }))
}

/**
 * Fetches `rel` of a remote backup into `tmp`. rsync copies into a fetch directory beside it (the name goes
 * on its stdin, so any bytes survive) and the file is renamed out: written once, on the backup disk.
 */
async function fetchRemote(ctx: TaskContext, r: RemoteSettings, backup: Backup, rel: string, beside: string, tmp: string): Promise<void> {
  const dir = tempSibling(beside, FETCHED)
  await fs.mkdir(fsPath(dir), { mode: 0o700 })
  try {
    const copy = await rsyncCopy(ctx.$, { src: `${remoteHost(r)}:${path.posix.join(backup.dir, DATA)}`, dest: dir, linkDest: null, rsh: rsyncRsh(r), excludes: [], only: [rel], signal: ctx.signal, onBytes: () => {} })
    if (copy.error) throw new Error(copy.error)
    await fs.rename(fsPath(path.join(dir, rel)), fsPath(tmp))
  } finally {
    await fs.rm(fsPath(dir), { recursive: true, force: true })
  }
}

/** Gives `tmp` the bad file's owner, mode and times (or the good copy's, when the bad one is missing) and syncs it. */
async function settle(tmp: string, attrs: Stats | null): Promise<void> {
  const handle = await fs.open(fsPath(tmp), 'r+')
  try {
    if (attrs) {
      const now = await handle.stat()
      // chown clears set-id bits: it goes before chmod.
      if (now.uid !== attrs.uid || now.gid !== attrs.gid) await handle.chown(attrs.uid, attrs.gid)
      await handle.chmod(attrs.mode & 0o7777)
      await handle.utimes(attrs.atimeMs / 1000, attrs.mtimeMs / 1000)
    }
    await handle.sync()
  } finally {
    await handle.close()
  }
}

interface Sources {
  ctx: TaskContext
  backup: Backup
  /** The other complete local backups, newest first. */
  others: Backup[]
  remote: RemoteSettings | null
  remoteStore?: { store: BackupStore; contents: StoreContents } | { error: string }
}

/**
 * The copies of `t` that hash as its manifest entry says, best first: the active copy, another local backup's
 * separate inode, a remote backup's copy (hashed there first, so no wrong bytes cross the network, and here
 * again once fetched). Each inode is hashed once; `tried` collects why each place gave nothing.
 */
async function* goodCopies(src: Sources, t: Target, tried: string[]): AsyncGenerator<GoodCopy> {
  const { ctx } = src
  const hashed = new Set(t.bad ? [inodeOf(t.bad)] : [])
  const local = async (from: string, file: string): Promise<GoodCopy | null> => {
    const st = await lstatOrNull(file)
    if (!st?.isFile() || st.size !== t.size || hashed.has(inodeOf(st))) return null
    hashed.add(inodeOf(st))
    if ((await sha256Of(file, st.size, ctx.signal)) !== t.sha256) return null
    return { from, attrs: st, stage: (tmp) => copyBytes(file, tmp) }
  }
  const activeFile = path.join(src.backup.meta.source, t.rel)
  const active = await local(ACTIVE_COPY, activeFile)
  if (active) yield active
  else tried.push(`the active copy ${activeFile} ${(await lstatOrNull(activeFile))?.isFile() ? 'differs' : 'is missing'}`)
  for (const other of src.others) {
    const copy = await local(other.name, path.join(other.dir, DATA, t.rel))
    if (copy) yield copy
  }
  tried.push(src.others.length ? `no other local backup holds a separate good copy` : 'there is no other local backup')
  const r = src.remote
  if (!r) {
    tried.push('BACKUP_REMOTE is not set')
    return
  }
  if (!src.remoteStore) {
    try {
      const store = sshStore(ctx, r)
      src.remoteStore = { store, contents: await store.scan() }
    } catch (err) {
      if (ctx.signal.aborted) throw err
      src.remoteStore = { error: (err as Error).message }
      ctx.warn(`BACKUP_REMOTE cannot give good copies: ${(err as Error).message}`)
    }
  }
  if ('error' in src.remoteStore) {
    tried.push(`BACKUP_REMOTE: ${src.remoteStore.error}`)
    return
  }
  const { store, contents } = src.remoteStore
  // The same backup sent there first: the likeliest to hold this very file.
  const candidates = [...contents.complete].reverse().sort((a, b) => Number(b.name === src.backup.name) - Number(a.name === src.backup.name))
  for (const rb of candidates) {
    const [verdict] = await store.hashCheck(rb, [{ rel: t.rel, size: t.size, sha256: t.sha256 }], { signal: ctx.signal, onProgress: () => {} })
    if (verdict?.verdict === 'match') yield { from: `${store.host}:${rb.name}`, attrs: null, stage: (tmp) => fetchRemote(ctx, r, rb, t.rel, t.file, tmp) }
  }
  tried.push(`no backup on ${store.host} holds a good copy`)
}

/**
 * Stages the first good copy of `t` beside it as a new file with the bad file's attributes, synced and
 * hashed once more; returns it and where it came from. In check mode nothing is written: the first copy
 * that hashed right is where it would come from.
 */
async function stageGoodCopy(src: Sources, t: Target, tried: string[]): Promise<{ from: string; tmp: string | null } | null> {
  const { ctx } = src
  for await (const copy of goodCopies(src, t, tried)) {
    if (ctx.check) return { from: copy.from, tmp: null }
    const tmp = tempSibling(t.file, STAGED)
    try {
      await copy.stage(tmp)
      await settle(tmp, t.bad ?? copy.attrs)
      const sha256 = await sha256Of(tmp, t.size, ctx.signal)
      if (sha256 === t.sha256) return { from: copy.from, tmp }
      ctx.warn(`${showName(t.rel)}: the copy from ${copy.from} hashed to ${sha256 ?? 'nothing (unreadable)'} once written, not to ${t.sha256}: not used`)
    } catch (err) {
      if (ctx.signal.aborted) throw err
      ctx.warn(`${showName(t.rel)}: the copy from ${copy.from} could not be written: ${(err as Error).message}`)
    }
    await fs.rm(fsPath(tmp), { force: true })
  }
  return null
}

/** Replaces `file` by `replacement` in one rename; a missing `file` is created by a link, which fails rather than replace whatever appeared there. */
async function putInPlace(replacement: string, file: string, exists: boolean): Promise<void> {
  try {
    if (exists) await fs.rename(fsPath(replacement), fsPath(file))
    else await fs.link(fsPath(replacement), fsPath(file))
  } finally {
    await fs.rm(fsPath(replacement), { force: true })
  }
  await fsyncDir(path.dirname(file))
}

export interface RepairRequest {
  /** The local store. */
  store: BackupStore
  backup: Backup
  contents: StoreContents
  lists: BackupLists
  problems: VerifyProblem[]
  remote: RemoteSettings | null
}

/** Heals what it can of `problems` in the local backup `backup`, each path through ctx.apply. */
export async function healBackup(ctx: TaskContext, req: RepairRequest): Promise<Repair> {
  const { backup, lists } = req
  const data = path.join(backup.dir, DATA)
  const sizes = new Map(lists.catalog.files)
  const repair: Repair = { healed: [], unhealed: [], leftovers: [] }
  const targets: Target[] = []
  for (const problem of req.problems) {
    if (!HEALABLE.has(problem.kind)) continue
    const rel = problem.path
    const sha256 = lists.manifest.get(rel)
    const size = sizes.get(rel)
    if (sha256 === undefined || size === undefined) {
      repair.unhealed.push({ path: rel, why: `${MANIFEST} or the catalog does not list it: no hash to check a copy against` })
      continue
    }
    const file = path.join(data, rel)
    const bad = await lstatOrNull(file)
    if (bad && !bad.isFile()) repair.unhealed.push({ path: rel, why: `${describeEntry(bad)} stands where the file belongs: not replaced` })
    else if (!bad && !(await lstatOrNull(path.dirname(file)))?.isDirectory()) repair.unhealed.push({ path: rel, why: 'its directory is missing too' })
    else targets.push({ rel, problem, sha256, size, file, bad })
  }

  const src: Sources = { ctx, backup, others: req.contents.complete.filter((b) => b.name !== backup.name).reverse(), remote: req.remote }
  // The paths of one rotten inode keep sharing one inode: the first is healed, the others get its good inode.
  const byInode = new Map<string, { healed: Healed; file: string; sha256: string } | { why: string }>()
  const healedFiles = new Set<string>()
  for (const t of targets) {
    const earlier = t.bad && byInode.get(inodeOf(t.bad))
    if (earlier) {
      if ('why' in earlier) repair.unhealed.push({ path: t.rel, why: earlier.why })
      continue
    }
    ctx.progress(`healing ${showName(t.rel)}`)
    const tried: string[] = []
    const staged = await stageGoodCopy(src, t, tried)
    if (!staged) {
      const why = `no good copy anywhere: ${tried.join('; ')}`
      repair.unhealed.push({ path: t.rel, why })
      if (t.bad) byInode.set(inodeOf(t.bad), { why })
      continue
    }
    const before = `${t.problem.kind}: ${t.problem.detail}`
    await ctx.apply({ path: t.file, action: 'heal backup file', before, after: `a copy from ${staged.from}` }, null, () => putInPlace(staged.tmp!, t.file, t.bad !== null))
    const healed: Healed = { path: t.rel, from: staged.from, copies: [`${backup.name}/${t.rel}`] }
    repair.healed.push(healed)
    healedFiles.add(t.file)
    if (t.bad) byInode.set(inodeOf(t.bad), { healed, file: t.file, sha256: t.sha256 })
  }
  if (![...byInode.values()].some((v) => 'healed' in v)) return repair

  // Every other path of the healed rotten inodes, in any complete backup (this one too: the source's hard links).
  const manifests = new Map<string, Map<string, string> | null>([[backup.name, lists.manifest]])
  const manifestOf = async (b: Backup) => {
    if (!manifests.has(b.name)) {
      const read = await req.store.readLists(b)
      manifests.set(b.name, 'message' in read ? null : read.manifest)
    }
    return manifests.get(b.name)!
  }
  for (const b of req.contents.complete) {
    ctx.progress(`looking for the rotten inodes in ${b.name}`)
    const bData = path.join(b.dir, DATA)
    const tree = walkTree(bData)
    if (b.name !== backup.name) repair.leftovers.push(...(await removeLeftovers(ctx, bData, { files: tree.files.map((f) => f.rel), dirPaths: tree.dirPaths })))
    for (const f of tree.files) {
      const found = byInode.get(`${f.dev}:${f.ino}`)
      const file = path.join(bData, f.rel)
      if (!found || !('healed' in found) || healedFiles.has(file)) continue
      const { healed } = found
      const manifest = await manifestOf(b)
      if (manifest?.get(f.rel) !== found.sha256) {
        ctx.warn(`${b.name}/${showName(f.rel)} shares the rotten inode of ${showName(healed.path)}, but its ${MANIFEST} ${manifest ? 'records other content' : 'cannot be read'}: left as it is`)
        continue
      }
      const change = { path: file, action: 'heal backup file' as const, before: `the rotten inode of ${backup.name}/${healed.path}`, after: `its good inode, a copy from ${healed.from}` }
      await ctx.apply(change, null, async () => {
        const tmp = tempSibling(file, STAGED)
        await fs.link(fsPath(found.file), fsPath(tmp))
        await putInPlace(tmp, file, true)
      })
      healedFiles.add(file)
      healed.copies.push(`${b.name}/${f.rel}`)
      // Another path of this backup that verify found bad is healed with it.
      if (b.name === backup.name && targets.some((t) => t.rel === f.rel)) repair.healed.push({ path: f.rel, from: healed.from, copies: healed.copies })
    }
  }
  return repair
}
