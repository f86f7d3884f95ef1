// Makes a new backup of the active models (or SRC): checks the source and the space on the backup disk,
// builds the backup as a .partial directory and publishes it by rename (lib/backup-build.ts), then points
// `latest` at it. Until that rename nothing counts as a backup; whatever an interrupted run leaves is removed
// by the next create or cleanup.
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { buildBackup, planCopy, type BuildOutcome } from '../lib/backup-build.ts'
import { backupName, backupsDir, findBackup, pointLatest, removePartials, scanStore, storeMissing, type BackupType } from '../lib/backups.ts'
import { lstatOrNull } from '../lib/fsx.ts'
import { bytes, count } from '../lib/report.ts'
import { RSYNC_VANISHED } from '../lib/rsync.ts'
import { defineTask, runWhenMain } from '../lib/task.ts'

const task = defineTask({
  name: 'backup-create',
  description: 'Back up the active models (or SRC) with rsync: full, or incremental with hard links to the last backup',
  tags: ['backup'],
  roots: ['models', 'backup'],
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
    const missing = await storeMissing(settings)
    if (missing) return ctx.fail(missing)

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
    // Neither step is journaled: a finished backup is data, not configuration, and no rollback removes it.
    let made: BuildOutcome | undefined
    await ctx.apply({ path: final, action: `create ${type} backup`, before: null, after: summary }, null, async () => {
      made = await buildBackup(ctx, { src, final, name, type, started, parentDir, plan })
    })
    await ctx.apply({ path: path.join(root, 'latest'), action: 'point latest', before: store.latest, after: name }, null, () => pointLatest(settings, name))
    if (ctx.check) return ctx.finish(`would create ${name} of ${src} (${summary})`)
    const { files, bytes: size, copied_bytes, hashed_bytes, rsync_exit } = made!
    const vanished = rsync_exit === RSYNC_VANISHED ? '; some source files vanished during the copy (see warnings)' : ''
    return ctx.finish(`${name}: ${count(files, 'file')}, ${bytes(size)}, ${bytes(copied_bytes)} copied, ${bytes(hashed_bytes)} hashed${vanished}`, { backup: name, type, source: src, parent: parentDir && path.basename(parentDir), ...made })
  },
})

export default task
runWhenMain(import.meta, task)
