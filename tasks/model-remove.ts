// Deletes a model directory from archive/ or staging/, and only one that is safe to lose: no alias uses it,
// no running process has a file of it open or mapped, and a complete backup whose last verification passed
// holds the same files, hashed here against its manifest (--force skips only that last condition). It is
// renamed to a hidden sibling before it is deleted, so a kill never leaves half a model under its real name;
// this and model list delete what a killed removal left. A deletion cannot be journaled: a failed run does
// not bring the directory back.
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { z } from 'zod'
import { defineTask, isInternalError, runWhenMain, type TaskContext, type TaskResult } from '../lib/core/task.ts'
import { bytes, count, progressLine, summarize } from '../lib/infra/format.ts'
import { describeEntry, lstatOrNull } from '../lib/infra/fsx.ts'
import { hashFiles } from '../lib/infra/hashing.ts'
import { healthDir } from '../lib/infra/layout.ts'
import { walkTree, type TreeFile } from '../lib/infra/tree.ts'
import { activeName, BackupCatalogs, freedBytes, manifestOf, modelDir, removalLeftovers, removeModelDir, verifiedOk } from '../lib/models/list.ts'
import { placeDir, type Place } from '../lib/models/places.ts'
import { aliasLink, modelsStateFile, readModelsState } from '../lib/models/promote.ts'
import { describeHolders, holdersOf } from '../lib/models/usage.ts'

type Ctx = TaskContext<{ dir: string }>

/** The aliases whose link or active directory is `dir` or lies inside it, compared by real path. */
async function aliasesUsing(ctx: Ctx, dir: string): Promise<string[]> {
  const real = await fs.realpath(dir)
  const inside = (p: string | null) => p !== null && (p === real || p.startsWith(real + '/'))
  const users: string[] = []
  for (const m of ctx.settings.models) {
    const targets = await Promise.all([aliasLink(ctx.settings, m.alias), path.join(ctx.settings.modelsActive, m.dir)].map((p) => fs.realpath(p).catch(() => null)))
    if (targets.some(inside)) users.push(m.alias)
  }
  return users
}

/** Why `dir`'s files are not known to be safe in a backup, or null when a verified backup holds every byte of them. */
async function backupRefusal(ctx: Ctx, dir: string, name: string, files: TreeFile[]): Promise<string | null> {
  const s = ctx.settings
  const catalogs = await BackupCatalogs.load(s)
  const backup = await catalogs.holding(name, files, verifiedOk)
  if (!backup) {
    const unverified = await catalogs.holding(name, files)
    const why = unverified
      ? `${unverified.name} holds the same files, but its last verification ${unverified.meta.verifications.length ? 'did not pass' : 'is missing'} (citadel backup verify ${unverified.name})`
      : `no complete backup of ${s.modelsActive} holds ${name}/ with the same files and sizes`
    return `refusing to delete ${dir}: ${why}; back it up first, or --force to delete it without a backup`
  }
  const manifest = await manifestOf(s, ctx.$, backup, name)
  if (typeof manifest === 'string') return `refusing to delete ${dir}: the lists of ${backup.name} cannot be read (${manifest}); --force to delete it without a backup`
  const total = files.reduce((sum, f) => sum + f.size, 0)
  const started = Date.now()
  const outcomes = await hashFiles(files.map((f) => ({ file: path.join(dir, f.rel), size: f.size })), {
    signal: ctx.signal,
    onProgress: (done) => ctx.progress(progressLine(`comparing ${name} with ${backup.name}:`, done, total, started)),
  })
  const differ = outcomes.flatMap((o, i) => {
    const rel = files[i]!.rel
    const listed = manifest.get(rel)
    if (o.sha256 === null) return [`${rel} unreadable (${o.error})`]
    return o.sha256 === listed ? [] : [`${rel} ${listed ? 'differs from' : 'is not in'} the manifest of ${backup.name}`]
  })
  if (differ.length) return `refusing to delete ${dir}: ${summarize(differ)}; --force to delete it anyway`
  ctx.log('model-remove-backed-up', { dir, backup: backup.name, files: files.length })
  return null
}

/** The place DIR is in: archive/ or staging/, or the one line saying why it is not removed. */
async function locate(ctx: Ctx): Promise<{ place: Place; dir: string } | { gone: string } | { refusal: string }> {
  const s = ctx.settings
  const name = ctx.args.dir
  const there = (place: Place) => lstatOrNull(path.join(placeDir(s, place), name))
  const candidates = (['archive', 'staging'] as const).map((place) => ({ place, dir: path.join(placeDir(s, place), name) }))
  const found: { place: Place; dir: string }[] = []
  for (const c of candidates) if (await lstatOrNull(c.dir)) found.push(c)
  if (found.length > 1) return { refusal: `${name} is in both archive/ and staging/: rename one of them, then remove the other` }
  if (found.length === 1) return found[0]!
  for (const place of ['active', 'downloads'] as const)
    if (await there(place)) return { refusal: `${path.join(placeDir(s, place), name)} is in ${place}/: model remove deletes only from archive/ or staging/${place === 'active' ? ' (model archive moves an unused one there)' : ''}` }
  return { gone: `${name} is in neither ${placeDir(s, 'archive')} nor ${placeDir(s, 'staging')}: nothing to remove` }
}

async function removeModel(ctx: Ctx): Promise<TaskResult> {
  const s = ctx.settings
  for (const leftover of await removalLeftovers(s)) {
    ctx.progress(`removing ${leftover}, left by an interrupted model remove`)
    await ctx.apply({ path: leftover, action: 'remove interrupted model removal', before: 'model directory being deleted', after: null }, null, () => fs.rm(leftover, { recursive: true }))
  }
  const where = await locate(ctx)
  if ('refusal' in where) return ctx.fail(where.refusal)
  if ('gone' in where) return ctx.finish(where.gone, { dir: ctx.args.dir, removed: null, freed_bytes: 0 })
  const { place, dir } = where
  const st = await lstatOrNull(dir)
  if (!st?.isDirectory()) return ctx.fail(`refusing to delete ${dir}: it is ${describeEntry(st)}, not a directory; a link is never followed (remove it by hand if it is yours)`)
  const users = await aliasesUsing(ctx, dir)
  if (users.length) return ctx.fail(`refusing to delete ${dir}: ${users.join(' and ')} ${users.length === 1 ? 'uses' : 'use'} it (model-links or MODEL_REGISTRY)`)
  const holdersNow = async () => describeHolders((await holdersOf([dir])).get(dir)!)
  const held = await holdersNow()
  if (held.length) return ctx.fail(`refusing to delete ${dir}: ${held.join('; ')}; stop it first`)

  const state = await readModelsState(s)
  const name = activeName(state, place, ctx.args.dir)
  const files = walkTree(dir).files
  if (ctx.force) ctx.warn(`--force: ${dir} is deleted without checking that a backup holds it`)
  else {
    const refused = await backupRefusal(ctx, dir, name, files)
    if (refused) return ctx.fail(refused)
    // The hashing took time: a process may have opened it meanwhile.
    const late = await holdersNow()
    if (late.length) return ctx.fail(`refusing to delete ${dir}: ${late.join('; ')}; stop it first`)
  }
  const freed = freedBytes(files)
  ctx.progress(`deleting ${dir}`)
  await ctx.apply({ path: dir, action: 'remove model', before: `${count(files.length, 'file')}, ${bytes(files.reduce((sum, f) => sum + f.size, 0))}`, after: null }, null, () => removeModelDir(dir))

  // The earlier version is gone: rollback's record forgets it, so a later directory of that name is not taken for it.
  const gone = (a: { archive: string | null; dir: string }) => (place === 'archive' ? a.archive === ctx.args.dir : place === 'active' && a.archive === null && a.dir === ctx.args.dir)
  const kept = Object.fromEntries(Object.entries(state.aliases).map(([alias, v]) => [alias, { archived: v.archived.filter((a) => !gone(a)) }]))
  const wanted = { aliases: kept }
  if (JSON.stringify(wanted) !== JSON.stringify(state)) {
    await ctx.ensureDir(healthDir(s), { mode: s.dirMode })
    await ctx.ensureFile(modelsStateFile(s), JSON.stringify(wanted, null, 2) + '\n', 0o644)
  }
  return ctx.finish(`${ctx.check ? 'would delete' : 'deleted'} ${place}/${ctx.args.dir}, ${ctx.check ? 'freeing' : 'freed'} ${bytes(freed)}`, { dir: ctx.args.dir, removed: dir, place, freed_bytes: freed, files: files.length })
}

const task = defineTask({
  name: 'model-remove',
  description: 'Delete a model directory from archive/ or staging/: never one an alias uses or a process has open, only when a verified backup holds the same bytes (unless --force); reports the bytes freed',
  tags: ['models'],
  roots: ['models', 'backup'],
  args: z.object({
    dir: modelDir('archive/ or staging/').meta({ positional: true, value: 'DIR', description: 'the directory in archive/ or staging/ to delete' }),
  }),
  async run(ctx) {
    try {
      return await removeModel(ctx)
    } catch (err) {
      if (ctx.signal.aborted || isInternalError(err)) throw err
      return ctx.fail((err as Error).message)
    }
  },
})

export default task
runWhenMain(import.meta)
