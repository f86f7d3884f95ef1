// Ensures the active models (or --model, --path) are what a backup holds, verified before anything goes live:
// built in <models root>/staging/.restore-<UTC>.partial from the files already right (hard-linked) and the
// backup (rsync), every byte hashed against the manifest, then each model directory renamed into place, the
// one it replaces renamed into archive/ (lib/backup/restore-run.ts). Then the links and storage-env.sh, as
// create-symlinks and write-env-script make them. --to DIR restores into an empty DIR instead; --drill into
// scratch that is removed again, to prove the backup restores. With --remote the backup is on BACKUP_REMOTE.
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { z } from 'zod'
import { localStore } from '../lib/backup/local-store.ts'
import { sshStore } from '../lib/backup/ssh-store.ts'
import { onStore, remoteArg } from '../lib/backup/store-tasks.ts'
import { chainOf, findBackup, isPartialName, latestDamaged, noSuchBackup, shownName, type BackupStore, type StoreContents } from '../lib/backup/store.ts'
import { topLevel, unknownSelection } from '../lib/backup/restore.ts'
import { drillScratch, drillSelection, otherCopies, removeLeftoverRestores, runRestore, type Destination } from '../lib/backup/restore-run.ts'
import { fixLinks, planLinks } from '../lib/links/links.ts'
import { ensureEnvScript } from '../lib/links/env-script.ts'
import { localPath } from '../lib/core/args.ts'
import { defineTask, isInternalError, runWhenMain, type TaskContext, type TaskResult } from '../lib/core/task.ts'
import { isInside, lstatOrNull } from '../lib/infra/fsx.ts'
import { inspectRoots } from '../lib/core/marks.ts'
import { bytes, count, duration, summarize } from '../lib/infra/format.ts'

const relPath = z.string().transform((v) => path.posix.normalize(v).replace(/\/+$/, ''))
  .refine((v) => v !== '' && v !== '.' && !path.posix.isAbsolute(v) && !v.startsWith('../') && v !== '..' && !v.includes('\0'), 'expected a path relative to the backup\'s data/, such as mixtral-8x7b-instruct/model-00001-of-00019.safetensors')

/** Where the restore goes, or why it cannot go there (one line). */
async function destination(ctx: TaskContext, to: string | undefined): Promise<Destination | string> {
  const s = ctx.settings
  const staging = path.join(s.modelsRoot, 'staging')
  const archive = path.join(s.modelsRoot, 'archive')
  if (to === undefined || ctx.args.drill) {
    const dirs = await Promise.all([s.modelsActive, staging, archive].map(async (d) => [d, await fs.stat(d).catch(() => null)] as const))
    const absent = dirs.find(([, st]) => !st?.isDirectory())
    if (absent) return `${absent[0]} is not a directory: run create-dirs (or the recover playbook) first`
    if (new Set(dirs.map(([, st]) => st!.dev)).size > 1) return `${s.modelsActive}, ${staging} and ${archive} are not on one filesystem, so a restore cannot put a verified model in place by rename; keep CITADEL_MODELS_ACTIVE on the model disk`
    if (!ctx.args.drill) return { target: s.modelsActive, partials: staging, archive, scratch: false }
    const scratch = drillScratch(staging)
    return { target: scratch, partials: scratch, archive: null, scratch: true }
  }
  for (const root of [s.modelsActive, s.backupRoot]) if (to === root || isInside(root, to)) return `--to ${to} is inside ${root}: give a directory outside the active models and the backups`
  const st = await lstatOrNull(to)
  if (st && !st.isDirectory()) return `--to ${to} is not a directory: give an empty directory, or one that does not exist yet`
  if (st) {
    const names = (await fs.readdir(to)).filter((n) => !/^\.restore-.*\.partial$/.test(n))
    if (names.length) return `--to ${to} is not empty (it holds ${summarize(names)}): give an empty directory, or one that does not exist yet`
  } else if (!(await lstatOrNull(path.dirname(to)))?.isDirectory()) return `--to ${to}: ${path.dirname(to)} is not a directory`
  else await ctx.ensureDir(to, { mode: 0o755 })
  return { target: to, partials: to, archive: null, scratch: false }
}

async function restore(ctx: TaskContext, store: BackupStore, other: () => Promise<{ store: BackupStore; contents: StoreContents } | null>): Promise<TaskResult> {
  const { args, settings } = ctx
  const wanted = args.backup as string | undefined
  if (wanted !== undefined && isPartialName(path.basename(wanted))) return ctx.fail(`${wanted} is a partial backup (an interrupted copy), never restored from; give a complete one (citadel backup status lists them)`)
  const contents = await store.scan()
  const broken = wanted === undefined || wanted === 'latest' ? latestDamaged(contents) : null
  if (broken) return ctx.fail(`latest points at ${broken.name}${store.host ? ` on ${store.host}` : ''}, which is damaged (${broken.reason}); give another backup by name`)
  const backup = findBackup(contents, wanted, settings.modelsActive)
  if (!backup) return ctx.fail(noSuchBackup(contents, wanted, store.label))
  const shown = shownName(store, backup.name)
  const lists = await store.readLists(backup)
  if ('message' in lists) return ctx.fail(`${shown} is damaged, not restored from: ${lists.message}`)
  const listing = await store.listData(backup)

  const models = (args.model as string[] | undefined) ?? []
  const unregistered = models.find((alias) => !settings.models.some((m) => m.alias === alias))
  if (unregistered) return ctx.fail(`--model ${unregistered} is not in MODEL_REGISTRY (${settings.models.map((m) => m.alias).join(', ') || 'empty'}); give a registered alias, or --path DIR`)
  const paths = args.path as string[] | undefined
  const units = paths ? [...new Set(paths.map((p) => p.split('/')[0]!))] : models.length ? models.map((a) => settings.models.find((m) => m.alias === a)!.dir) : topLevel(listing)
  const sel = { units, paths: paths ?? null }
  const unknown = unknownSelection(listing, sel, shown)
  if (unknown) return ctx.fail(unknown)

  const dest = await destination(ctx, args.to as string | undefined)
  if (typeof dest === 'string') return ctx.fail(dest)
  await removeLeftoverRestores(ctx, dest.scratch ? path.dirname(dest.target) : dest.partials)
  const chosen = args.drill ? drillSelection(sel, chainOf(contents, backup.meta.source)) : sel
  const request = { store, backup, lists, listing, sel: chosen, dest, elsewhere: () => otherCopies(store, contents, backup, other), drill: Boolean(args.drill) }
  let outcome
  try {
    if (dest.scratch && !ctx.check) await fs.mkdir(dest.target, { mode: 0o700 })
    outcome = await runRestore(ctx, request, `the model disk ${settings.modelsRoot}`)
  } catch (err) {
    if (ctx.signal.aborted || isInternalError(err)) throw err
    return ctx.fail((err as Error).message)
  } finally {
    if (dest.scratch) await fs.rm(dest.target, { recursive: true, force: true })
  }
  const { plan, record } = outcome
  const copied = plan.units.reduce((s, u) => s + (u.current === 'same' ? 0 : u.copyBytes), 0)
  const data = { backup: backup.name, store: store.label, to: dest.target, units: plan.units.map((u) => ({ name: u.name, paths: u.roots, state: u.current, files_to_copy: u.copy.length, files_good: u.reuse.length, bytes_to_copy: u.copyBytes, bytes_good: u.reuseBytes })), record }
  if (args.drill) {
    const what = record ? `${summarize(record.what)}: ${count(record.files_verified, 'file')}, ${bytes(record.bytes_copied)} restored and verified in ${duration(record.duration_ms, { seconds: true })}; scratch copy removed` : `would restore ${summarize(chosen.paths ?? chosen.units)} into scratch and verify it`
    return ctx.finish(`drill from ${shown}: ${what}`, data)
  }
  if (dest.archive) {
    const links = await planLinks(ctx)
    // In check mode nothing was restored: a model's link waits for a directory this restore would bring, and would be made.
    const coming = new Set(outcome.restored.map((u) => path.join(dest.target, u.name)))
    const wouldFix = ctx.check ? links.states.filter((s) => s.model !== undefined && !s.targetExists && coming.has(s.target) && (s.verdict === 'missing' || s.verdict === 'wrong-target')) : []
    await fixLinks(ctx, [...links.fixes, ...wouldFix])
    await ensureEnvScript(ctx)
  }
  const todo = plan.units.filter((u) => u.current !== 'same')
  if (!todo.length) return ctx.finish(`${summarize(plan.units.map((u) => u.name))} already as ${shown} holds ${plan.units.length === 1 ? 'it' : 'them'} (${bytes(plan.hashedBytes)} hashed, nothing copied)`, data)
  const verb = ctx.check ? 'would restore' : 'restored'
  return ctx.finish(`${verb} ${summarize(todo.flatMap((u) => u.roots))} from ${shown} into ${dest.target}: ${bytes(copied)} ${ctx.check ? 'to copy' : 'copied'}, ${bytes(todo.reduce((s, u) => s + u.reuseBytes, 0))} already good`, data)
}

const task = defineTask({
  name: 'backup-restore',
  description: 'Restore the models (or --model, --path) from a backup: built beside the active tree, every byte verified, then renamed into place; the replaced directory goes to archive/',
  tags: ['backup', 'restore'],
  // The recover playbook's fallback needs no backup disk: a dead one is why it may fall back.
  roots: (args) => (args.remote || args.fallback ? ['models'] : ['models', 'backup']),
  args: z.object({
    backup: z.string().optional().meta({ positional: true, value: 'BACKUP', description: 'a backup name or path, or latest (the default: the newest complete backup of the active models)' }),
    model: z.array(z.string()).optional().meta({ value: 'ALIAS', description: 'restore the directory MODEL_REGISTRY gives for ALIAS (repeatable); default: every model directory in the backup' }),
    path: z.array(relPath).optional().meta({ value: 'REL', description: "restore only this file or directory, relative to the backup's data/ (repeatable), such as one shard" }),
    to: localPath.optional().meta({ value: 'DIR', description: 'restore into DIR (absent or empty) instead of the active models directory, which stays as it is' }),
    drill: z.boolean().optional().meta({ description: 'a restore drill: restore one model (the one drilled longest ago) or --path into scratch, verify it, record it, remove it' }),
    remote: remoteArg,
    fallback: z.boolean().optional().meta({ preset: true, description: 'set by the recover playbook: with no complete backup on the backup disk and BACKUP_REMOTE set, restore from BACKUP_REMOTE' }),
  }).refine((a) => !(a.drill && a.to !== undefined), { path: ['to'], message: 'not with --drill: a drill restores into scratch under staging and removes it' })
    .refine((a) => !(a.model && a.path), { path: ['path'], message: 'not with --model: give the model\'s files as paths under its directory' }),
  aliases: { 'remote-backup-restore': { remote: true } },
  async run(ctx) {
    const remote = ctx.settings.backup.remote
    // A new server whose backup disk died too: the off-host store is then the only copy there is. Only a
    // backup disk with its mark counts as one: another disk mounted there is never restored from.
    if (ctx.args.fallback && !ctx.args.remote) {
      const [disk] = await inspectRoots(ctx.$, ctx.settings, ['backup'])
      const local = localStore(ctx.settings, ctx.$)
      const none = disk!.verdict !== 'ok' ? `the backup disk is not usable (${disk!.reason})` : !(await local.scan()).complete.length ? `no complete backup in ${local.label}` : null
      if (none && !remote) return ctx.fail(`${none}, and BACKUP_REMOTE is not set: there is nothing to restore from; mount the backup disk, or set BACKUP_REMOTE`)
      if (none) {
        ctx.warn(`${none}: restoring from BACKUP_REMOTE`)
        ctx = { ...ctx, args: { ...ctx.args, remote: true } }
      }
    }
    return onStore(ctx, (store) => {
      // Read only when a file of this backup is bad; a far store that cannot be read is one warning, not a failure.
      const other = async () => {
        const far = ctx.args.remote ? localStore(ctx.settings, ctx.$) : remote ? sshStore(ctx, remote) : null
        try {
          return far && { store: far, contents: await far.scan() }
        } catch (err) {
          ctx.warn(`could not look for good copies in ${far!.label}: ${(err as Error).message}`)
          return null
        }
      }
      return store.exclusive(ctx, () => restore(ctx, store, other))
    })
  },
})

export default task
runWhenMain(import.meta)
