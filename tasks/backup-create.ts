// Makes a new backup of the active models (or SRC): checks the source (never empty, never shrunk by more
// than BACKUP_MAX_SHRINK since its previous backup, unless --force) and the space on the backup disk, builds
// the backup as a .partial directory and publishes it by rename (lib/backup/build.ts), then points `latest`
// at it when it is of the active models. Until that rename nothing counts as a backup; whatever an
// interrupted run leaves is removed by the next create or cleanup, under the store lock so that another app
// root sharing the store never removes a partial still being built.
// A live file the disk changed without a write (bit rot: lib/backup/rot.ts), found against the newest complete
// backup of the source whatever the type, is backed up from that backup's copy, and the task fails keeping
// the published backup: its content is good, but the model disk needs the operator.
// With --remote it ensures BACKUP_REMOTE holds a local backup, the latest or BACKUP: sent over ssh with rsync
// as <name>.partial, hard-linked to the newest remote backup where files are unchanged, renamed once
// complete, and remote latest swapped to the newest. A backup already there is left alone, so a second
// send changes nothing.
import { promises as fs } from 'node:fs'
import path from 'node:path'
import type { RemoteSettings } from '../lib/infra/config.ts'
import { buildBackup, planCopy, spaceShortfall, type BuildOutcome } from '../lib/backup/build.ts'
import { backupsDir, scanStore } from '../lib/backup/local-store.ts'
import { bytesToSend, sendBackup } from '../lib/backup/send.ts'
import { scanRemote } from '../lib/backup/ssh-store.ts'
import { backupName, chainOf, findBackup, noSuchBackup, type Backup, type BackupStore, type BackupType } from '../lib/backup/store.ts'
import { z } from 'zod'
import { onStore, remoteArg, removePartials, rootsOf } from '../lib/backup/store-tasks.ts'
import type { TreeFile } from '../lib/infra/tree.ts'
import { lstatOrNull } from '../lib/infra/fsx.ts'
import { RSYNC_VANISHED } from '../lib/backup/rsync.ts'
import type { RottenFile } from '../lib/backup/rot.ts'
import { defineTask, runWhenMain, type TaskContext, type TaskResult } from '../lib/core/task.ts'
import { bytes, count, progressLine, summarize } from '../lib/infra/format.ts'

/**
 * Why this source looks emptied rather than changed (an unmounted disk, a wrong mount), or null: no files
 * at all, or fewer files or bytes than its previous backup by more than BACKUP_MAX_SHRINK.
 */
function shrinkage(src: string, files: TreeFile[], previous: Backup | null, maxShrink: number): string | null {
  const size = files.reduce((s, f) => s + f.size, 0)
  if (!files.length) return `${src} holds no files: refusing to make an empty backup`
  if (!previous) return null
  const was = previous.meta
  const fell = (now: number, then: number) => (then > 0 ? (then - now) / then : 0)
  const worst = Math.max(fell(files.length, was.files), fell(size, was.bytes))
  if (worst <= maxShrink) return null
  return `${src} holds ${count(files.length, 'file')}, ${bytes(size)}; its previous backup ${previous.name} holds ${count(was.files, 'file')}, ${bytes(was.bytes)}: a fall of ${Math.round(worst * 100)}%, more than BACKUP_MAX_SHRINK=${maxShrink} allows`
}

async function make(ctx: TaskContext, local: BackupStore, src: string, asked: BackupType | undefined): Promise<TaskResult> {
  const { settings } = ctx
  const root = local.label
  const store = await local.scan()
  await removePartials(ctx, local, store)
  // Each source is its own chain: its parent is the newest backup of the same source, and only a backup
  // of the active models moves `latest`, which vLLM's restores and the daily incremental go by.
  const previous = chainOf(store, src).at(-1) ?? null
  const movesLatest = src === settings.modelsActive
  let type = asked ?? (previous ? 'incremental' : 'full')
  if (type === 'incremental' && !previous) {
    ctx.warn(`no complete backup of ${src} to base an incremental on: making a full one`)
    type = 'full'
  }
  const parentDir = type === 'incremental' ? previous!.dir : null

  ctx.progress(`reading ${src}`)
  const plan = planCopy(src, parentDir)
  const shrunk = shrinkage(src, plan.source.files, previous, settings.backup.maxShrink)
  if (shrunk) {
    if (!ctx.force) return ctx.fail(`${shrunk}; check that the model disk is mounted and the models are in place, or rerun with --force to back it up anyway`)
    ctx.warn(`${shrunk}: backed up anyway (--force)`)
  }
  const short = await spaceShortfall(plan, root)
  if (short) return ctx.fail(`not enough space on ${settings.backupRoot}: ${short}`)

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
    made = await buildBackup(ctx, { src, final, name, type, started, parentDir, referenceDir: previous?.dir ?? null, plan })
  })
  if (movesLatest) await ctx.apply({ path: local.pathOf('latest'), action: 'point latest', before: store.latest, after: name }, null, () => local.pointLatest(name))
  if (ctx.check) return ctx.finish(`would create ${name} of ${src} (${summary})`)
  const { files, bytes: size, copied_bytes, hashed_bytes, rsync_exit } = made!
  const vanished = rsync_exit === RSYNC_VANISHED ? '; some source files vanished during the copy (see warnings)' : ''
  const data = { backup: name, type, source: src, parent: parentDir && path.basename(parentDir), ...made }
  // The backup is good and stays published; the model disk is what failed, and the operator must hear of it.
  if (made!.rotten.length) return ctx.failKeepingChanges(rotReport(name, made!.rotten, movesLatest), data)
  return ctx.finish(`${name}: ${count(files, 'file')}, ${bytes(size)}, ${bytes(copied_bytes)} copied, ${bytes(hashed_bytes)} hashed${vanished}`, data)
}

/** The one line for live files the disk changed without a write; `viaLatest` when a plain restore takes `name`. */
function rotReport(name: string, rotten: RottenFile[], viaLatest: boolean): string {
  const line = `${count(rotten.length, 'live file')} changed on the model disk without being written (bit rot?): ${summarize(rotten.map((r) => r.path))}`
  const kept = rotten.filter((r) => r.from !== null)
  const lost = rotten.filter((r) => r.from === null)
  const parts = [line]
  if (kept.length) {
    const paths = kept.slice(0, 3).map((r) => `--path ${r.path}`).join(' ') + (kept.length > 3 ? ` (and ${kept.length - 3} more)` : '')
    const how = viaLatest ? `citadel backup restore ${paths}` : `citadel backup restore ${name} ${paths}`
    parts.push(`the backup ${name} holds their last good copy from ${kept[0]!.from}: ${how}`)
  }
  if (lost.length) parts.push(`the previous backup's copy of ${summarize(lost.map((r) => r.path))} is damaged too: ${name} holds the live bytes; look for a good copy in older backups`)
  return parts.join('; ')
}

/** Sends the local backup `wanted` (latest when undefined) to `remote`, unless it is there already. */
async function send(ctx: TaskContext, remote: BackupStore, r: RemoteSettings, wanted: string | undefined): Promise<TaskResult> {
  const local = await scanStore(ctx.settings)
  const backup = findBackup(local, wanted, ctx.settings.modelsActive)
  if (!backup) return ctx.fail(noSuchBackup(local, wanted, backupsDir(ctx.settings)))
  const there = await scanRemote(ctx.$, r, ctx.check ? 'read' : 'create')
  await removePartials(ctx, remote, there)
  const newest = [...there.complete.map((b) => b.name), backup.name].sort().at(-1)!
  if (there.complete.some((b) => b.name === backup.name)) {
    if (there.latest !== newest)
      await ctx.apply({ path: remote.pathOf('latest'), action: 'point latest', before: there.latest, after: newest }, null, () => remote.pointLatest(newest))
    return ctx.finish(`${backup.name} is on ${remote.label}`, { backup: backup.name, remote: remote.label, sent: false })
  }
  const parent = there.complete.at(-1) ?? null
  const needed = bytesToSend(backup, local.complete.find((b) => b.name === parent?.name) ?? null)
  if (needed > there.disk.free_bytes)
    return ctx.fail(`not enough space on ${remote.label}: sending ${backup.name} needs about ${bytes(needed)}, ${bytes(there.disk.free_bytes)} are free`)
  const summary = `${backup.type} backup, ${count(backup.meta.files, 'file')}, ${bytes(backup.meta.bytes)}; linked to ${parent?.name ?? 'nothing (first remote backup)'}`
  const started = Date.now()
  let copied = 0
  await ctx.apply({ path: remote.pathOf(backup.name), action: 'send backup', before: null, after: summary }, null, async () => {
    copied = await sendBackup(ctx, r, backup, parent, newest, (done) => ctx.progress(progressLine('sending', done, needed, started)))
  })
  const verb = ctx.check ? 'would send' : 'sent'
  return ctx.finish(`${verb} ${backup.name} to ${remote.label} (${summary})`, { backup: backup.name, remote: remote.label, sent: true, parent: parent?.name ?? null, copied_bytes: copied })
}

const task = defineTask({
  name: 'backup-create',
  description: 'Back up the active models (or SRC) with rsync: full, or incremental with hard links to the newest backup of the same source',
  tags: ['backup'],
  // A send reads the local backup it sends.
  roots: rootsOf(['models', 'backup'], ['backup']),
  idempotent: false,
  args: z.object({
    // A path here, a backup's name with --remote: resolved only once it is known to be a path.
    src: z.string().refine((v) => v !== '' && !v.includes('\0'), 'expected a directory, or with --remote a backup name').optional()
      .meta({ positional: true, value: 'SRC', description: 'directory to back up (default: the active models directory); with --remote, the name of the local backup to send (default: latest)' }),
    type: z.enum(['full', 'incremental'], { error: 'expected full or incremental' }).optional()
      .meta({ value: 'full|incremental', description: 'default: incremental when a complete backup exists, else full' }),
    remote: remoteArg,
  }).refine((a) => !(a.remote && a.type !== undefined), { path: ['type'], message: 'not with --remote: a send copies a backup as it was made; give its name (or none, for latest)' }),
  aliases: { 'remote-backup-create': { remote: true } },
  async run(ctx) {
    const { settings } = ctx
    return onStore(ctx, async (store, remote) => {
      if (remote) {
        return send(ctx, store, remote, ctx.args.src)
      }
      const src = path.resolve(ctx.args.src ?? settings.modelsActive)
      const root = store.label
      if (!(await fs.stat(src).catch(() => null))?.isDirectory()) return ctx.fail(`source ${src} is not a directory`)
      const rel = path.relative(src, root)
      if (!rel.startsWith('..') && !path.isAbsolute(rel)) return ctx.fail(`source ${src} contains the backup directory ${root}; back up something that does not`)
      const missing = await store.missing()
      if (missing) return ctx.fail(missing)
      return store.exclusive(ctx, () => make(ctx, store, src, ctx.args.type))
    })
  },
})

export default task
runWhenMain(import.meta)
