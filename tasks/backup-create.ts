// Makes a new backup of the active models (or SRC): rsync into backup_<UTC time>_<type>.partial, manifest,
// metadata, one syncfs, then rename to the final name and point `latest` at it. Until that rename nothing
// counts as a backup; whatever an interrupted run leaves is removed by the next create or cleanup.
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { buildManifest, hashSource, planCopy, writeLists, type EarlyHashes } from '../lib/backup-build.ts'
import { backupName, backupsDir, DATA, findBackup, partialName, pointLatest, removeBackupDir, removePartials, scanStore, writeFirstMeta, type BackupType } from '../lib/backups.ts'
import { fsyncDir, lstatOrNull } from '../lib/fsx.ts'
import { bytes, count, progressLine } from '../lib/report.ts'
import { rsyncCopy, RSYNC_VANISHED } from '../lib/rsync.ts'
import { defineTask, runWhenMain } from '../lib/task.ts'

const task = defineTask({
  name: 'backup-create',
  description: 'Back up the active models (or SRC) with rsync: full, or incremental with hard links to the last backup',
  tags: ['backup'],
  idempotent: false,
  args: [
    { name: 'src', positional: true, type: 'string', value: 'SRC', help: 'directory to back up (default: the active models directory)' },
    { name: 'type', type: 'string', value: 'full|incremental', help: 'default: incremental when a complete backup exists, else full', check: (v) => (v === 'full' || v === 'incremental' ? null : 'expected full or incremental') },
  ],
  async run(ctx) {
    const { settings } = ctx
    const src = path.resolve(typeof ctx.args.src === 'string' ? ctx.args.src : settings.modelsActive)
    const root = backupsDir(settings)
    if (!(await fs.stat(src).catch(() => null))?.isDirectory()) return ctx.fail(`source ${src} is not a directory`)
    const rel = path.relative(src, root)
    if (!rel.startsWith('..') && !path.isAbsolute(rel)) return ctx.fail(`source ${src} contains the backup directory ${root}; back up something that does not`)
    if (!(await lstatOrNull(root))?.isDirectory()) return ctx.fail(`${root} is not a directory: run initial-setup first (or create-dirs)`)

    const store = await scanStore(settings)
    await removePartials(ctx, store)
    const parent = findBackup(store, undefined)
    let type = (ctx.args.type as BackupType | undefined) ?? (parent ? 'incremental' : 'full')
    if (type === 'incremental' && !parent) {
      ctx.warn('no complete backup to base an incremental on: making a full one')
      type = 'full'
    }
    const parentDir = type === 'incremental' ? parent!.dir : null

    ctx.progress(`reading ${src}`)
    const plan = planCopy(src, parentDir)
    const { bavail, bsize } = await fs.statfs(root)
    const available = bavail * bsize
    if (plan.bytesNeeded > available)
      return ctx.fail(`not enough space on ${settings.backupRoot}: the backup needs ${plan.bytesNeeded} bytes (${plan.bytesToCopy} to copy, the rest directories, metadata and a margin), ${available} are available`)

    const started = new Date()
    let name = backupName(started, type)
    // Names sort by time: a second already taken by a backup of either type moves this one to the next.
    const second = (n: string) => n.slice(0, 'backup_YYYYMMDD_HHMMSS'.length)
    for (let t = started.getTime(); store.complete.some((b) => second(b.name) === second(name)) || (await lstatOrNull(path.join(root, name))); ) name = backupName(new Date((t += 1000)), type)
    const final = path.join(root, name)
    const summary = `${count(plan.source.files.length, 'file')}, ${bytes(plan.source.files.reduce((s, f) => s + f.size, 0))}; ${bytes(plan.bytesToCopy)} to copy`
    if (ctx.check) {
      await ctx.apply({ path: final, action: `create ${type} backup`, before: null, after: summary }, null, async () => {})
      return ctx.finish(`would create ${name} of ${src} (${summary})`)
    }

    const partial = path.join(root, partialName(name))
    let published = false
    const outcome: Record<string, unknown> = {}
    await ctx.apply({ path: final, action: `create ${type} backup`, before: null, after: summary }, null, async () => {
      try {
        await fs.mkdir(path.join(partial, DATA), { recursive: true, mode: 0o755 })
        const copyStart = Date.now()
        let copied = 0
        let hashedEarly = 0
        const show = () => ctx.progress(`${progressLine('copying', copied, plan.bytesToCopy, copyStart)}; hashed ${bytes(hashedEarly)}`)
        const early: Promise<EarlyHashes> = hashSource(src, plan.toCopy, ctx.signal, (b) => ((hashedEarly = b), show()))
        early.catch(() => {})
        const copy = await rsyncCopy(ctx.$, { src, dest: path.join(partial, DATA), linkDest: parentDir && path.join(parentDir, DATA), signal: ctx.signal, onBytes: (b) => ((copied = b), show()) })
        if (copy.error) throw new Error(copy.error)
        for (const w of copy.warnings) ctx.warn(w)
        const hashStart = Date.now()
        const manifest = await buildManifest(partial, src, parentDir, plan.parentInodes, await early, ctx.signal, (done, total) => ctx.progress(progressLine('hashing the copy:', done, total, hashStart)))
        await writeLists(partial, parentDir, manifest)
        const totalBytes = manifest.copy.files.reduce((s, f) => s + f.size, 0)
        await writeFirstMeta(partial, {
          format: 1, name, type, source: src, started: started.toISOString(), finished: new Date().toISOString(),
          files: manifest.copy.files.length, bytes: totalBytes, symlinks: manifest.copy.symlinks.length, parent: parentDir && path.basename(parentDir),
          rsync: { exit_code: copy.exitCode, warnings: copy.warnings }, hashed_bytes: manifest.hashedBytes, reused_hashes: manifest.reused, verifications: [],
        })
        ctx.progress('syncing the backup disk')
        await ctx.$`sync --file-system ${partial}`
        await fs.rename(partial, final)
        published = true
        await fsyncDir(root)
        Object.assign(outcome, { files: manifest.copy.files.length, bytes: totalBytes, copied_bytes: copied, hashed_bytes: manifest.hashedBytes, reused_hashes: manifest.reused, rsync_exit: copy.exitCode })
      } finally {
        if (!published) await removeBackupDir(settings, partial).catch((err) => ctx.warn(`could not remove ${partial}: ${(err as Error).message}`))
      }
    })
    await ctx.apply({ path: path.join(root, 'latest'), action: 'point latest', before: store.latest, after: name }, null, () => pointLatest(settings, name))
    const vanished = outcome.rsync_exit === RSYNC_VANISHED ? '; some source files vanished during the copy (see warnings)' : ''
    return ctx.finish(`${name}: ${count(outcome.files as number, 'file')}, ${bytes(outcome.bytes as number)}, ${bytes(outcome.copied_bytes as number)} copied, ${bytes(outcome.hashed_bytes as number)} hashed${vanished}`, { backup: name, type, source: src, parent: parentDir && path.basename(parentDir), ...outcome })
  },
})

export default task
runWhenMain(import.meta, task)
