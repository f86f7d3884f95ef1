// Switching the version an alias serves, for promote (a staged directory goes live) and rollback (an
// archived one comes back). The order is what keeps vLLM's path valid at every instant: the incoming
// directory is renamed into active/ first, then the alias's link is flipped in one rename, then the
// registry and storage-env.sh follow, and only then does the outgoing directory leave active/ for
// archive/ (renamed, never deleted). Each step is journaled, so a failure or a kill anywhere is undone by
// the runner, newest first, back to the old version fully live.
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { z } from 'zod'
import type { ChangeAction } from '../core/actions.ts'
import type { TaskContext } from '../core/task.ts'
import { ALIAS_PATTERN, type Settings } from '../infra/config.ts'
import { describeEntry, fileStamp, lstatOrNull, moveNoReplace, readFileOrNull } from '../infra/fsx.ts'
import { healthDir } from '../infra/layout.ts'
import { ensureEnvScript } from '../links/env-script.ts'
import { ensureRegistry, withAlias } from './registry.ts'
import { checkModelStructure } from './check.ts'
import { crossesFilesystems } from './move.ts'
import { summarize } from '../infra/format.ts'

export const stagingDir = (s: Settings) => path.join(s.modelsRoot, 'staging')
export const archiveDir = (s: Settings) => path.join(s.modelsRoot, 'archive')
export const aliasLink = (s: Settings, alias: string) => path.join(s.appRoot, 'model-links', alias)
/** Which archived directories hold earlier versions of each alias: what rollback chooses from. */
export const modelsStateFile = (s: Settings) => path.join(healthDir(s), 'models.json')

/** A model directory's name as promote and rollback take it: one path component. */
export const dirName = z.string().refine((v) => v !== '' && v !== '.' && v !== '..' && !v.includes('/') && !v.includes('\0'), 'expected the name of a directory in staging/ (one path component: no "/", not "." or "..")')
export const aliasName = z.string().refine((v) => ALIAS_PATTERN.test(v), 'expected a model alias as MODEL_REGISTRY names them ([a-z0-9][a-z0-9_-]*)')

const versionSchema = z.object({
  /** The directory's name in active/ when it served. */
  dir: z.string(),
  /**
   * Its name in archive/; null while it stays in active/ under `dir`, where promote leaves it when archive/ is
   * on another filesystem (a move there would be a copy, see switchVersion), and rollback takes it from.
   */
  archive: z.string().nullable(),
  archived_at: z.string(),
  /** Replaced by a rollback: never chosen by one. */
  bad: z.boolean(),
})
export type ArchivedVersion = z.infer<typeof versionSchema>
const stateSchema = z.object({ aliases: z.record(z.string(), z.object({ archived: z.array(versionSchema) })) })
export type ModelsState = z.infer<typeof stateSchema>

export async function readModelsState(s: Settings): Promise<ModelsState> {
  const file = modelsStateFile(s)
  const text = await readFileOrNull(file)
  if (text === null) return { aliases: {} }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    throw new Error(`${file} is not JSON: move it away (rollback then knows no archived versions) and rerun`)
  }
  const parsed = stateSchema.safeParse(json)
  if (!parsed.success) throw new Error(`${file} is not a record of archived model versions (${parsed.error.issues[0]?.message}): move it away and rerun`)
  return parsed.data
}

/** Whether two records name the same directory: one name in archive/, or one kept in active/. */
const samePlace = (a: ArchivedVersion, b: ArchivedVersion) => a.archive === b.archive && (a.archive !== null || a.dir === b.dir)

/** The archived versions of `alias` rollback may take, newest last: not marked bad, and still in archive/. */
export async function rollbackCandidates(s: Settings, state: ModelsState, alias: string): Promise<ArchivedVersion[]> {
  const found: ArchivedVersion[] = []
  for (const v of state.aliases[alias]?.archived ?? []) {
    if (v.bad) continue
    const where = v.archive === null ? (s.models.some((m) => m.dir === v.dir) ? null : path.join(s.modelsActive, v.dir)) : path.join(archiveDir(s), v.archive)
    if (where && (await lstatOrNull(where))?.isDirectory()) found.push(v)
  }
  return found
}

/** A free name in archive/ for `dir`: the name itself, else <dir>.<UTC>, then -2, -3, ... */
export async function archiveName(archive: string, dir: string, date: Date): Promise<string> {
  if (!(await lstatOrNull(path.join(archive, dir)))) return dir
  for (let n = 1; ; n++) {
    const name = `${dir}.${fileStamp(date)}${n === 1 ? '' : `-${n}`}`
    if (!(await lstatOrNull(path.join(archive, name)))) return name
  }
}

export interface Incoming {
  /** Where the version is now (staging/DIR, archive/NAME); null when it is already in active/. */
  from: string | null
  /** Its name in active/. */
  dir: string
  action: ChangeAction
  /** The archive entry it is, when it comes back from archive/: taken out of the record. */
  archived?: ArchivedVersion
}

export interface SwitchOutcome {
  /** The directory the alias served before, null for a new alias. */
  previous: string | null
  /** Where the previous directory went: its name in archive/, or why it stayed. */
  archived: string | null
  kept: string | null
}

/**
 * Makes `alias` serve `incoming` (see the header for the order), marking the version it replaces bad when
 * `markBad`. `envFile` is the file MODEL_REGISTRY is rewritten in. Throws one line when something stands in
 * the way; whatever it changed by then is in the journal.
 */
export async function switchVersion(ctx: TaskContext, alias: string, incoming: Incoming, envFile: string, markBad: boolean): Promise<SwitchOutcome> {
  const s = ctx.settings
  const now = new Date()
  const live = path.join(s.modelsActive, incoming.dir)
  const previous = s.models.find((m) => m.alias === alias)?.dir ?? null
  if (incoming.from) {
    const there = await lstatOrNull(live)
    if (there) throw new Error(`${live} is ${describeEntry(there)} already, which ${alias} does not serve: move it away or give the version another name`)
    const from = incoming.from
    await ctx.apply({ path: live, action: incoming.action, before: null, after: from }, { op: 'move-back', from: live, to: from }, () => moveNoReplace(from, live))
  }
  ctx.progress(`pointing ${alias} at ${live}`)
  await ctx.ensureLink(aliasLink(s, alias), live)
  await ensureRegistry(ctx, envFile, alias, incoming.dir)
  const next: Settings = { ...s, models: withAlias(s.models, alias, incoming.dir) }
  await ensureEnvScript({ ...ctx, settings: next })

  const state = await readModelsState(s)
  const back = incoming.archived
  // The version coming back leaves the record, with any older entry for the same place.
  const versions = (state.aliases[alias]?.archived ?? []).filter((v) => !back || !samePlace(v, back))
  const outcome: SwitchOutcome = { previous, archived: null, kept: null }
  const old = previous === null || previous === incoming.dir ? null : path.join(s.modelsActive, previous)
  const oldSt = old ? await lstatOrNull(old) : null
  const sharedWith = next.models.find((m) => m.dir === previous)?.alias
  if (old && previous && sharedWith) outcome.kept = `${previous} stays in ${s.modelsActive}: ${sharedWith} serves it too`
  // A move to archive/ on another filesystem is a copy of the whole model: not a step for the moment between
  // the flip and the journal's end, where an undo must be one rename. model archive does it, verified.
  else if (old && previous && oldSt?.isDirectory() && (await crossesFilesystems(old, archiveDir(s)).catch(() => false))) {
    outcome.kept = `${previous} stays in ${s.modelsActive}, where model rollback takes it back from: ${archiveDir(s)} is on another filesystem, where promote and rollback do not copy; \`citadel model archive ${previous}\` copies it there, checked against the source (rollback then no longer takes it)`
    versions.push({ dir: previous, archive: null, archived_at: now.toISOString(), bad: markBad })
  }
  else if (old && previous && oldSt?.isDirectory()) {
    const name = await archiveName(archiveDir(s), previous, now)
    const to = path.join(archiveDir(s), name)
    await ctx.apply({ path: old, action: 'archive model', before: `served by ${alias}`, after: to }, { op: 'move-back', from: to, to: old }, () => moveNoReplace(old, to))
    versions.push({ dir: previous, archive: name, archived_at: now.toISOString(), bad: markBad })
    outcome.archived = name
  } else if (old) outcome.kept = `${old} is ${describeEntry(oldSt)}, not a model directory: left where it is`
  const wanted = { aliases: { ...state.aliases, [alias]: { archived: versions } } }
  if (JSON.stringify(wanted) !== JSON.stringify(state)) {
    await ctx.ensureDir(healthDir(s), { mode: s.dirMode })
    await ctx.ensureFile(modelsStateFile(s), JSON.stringify(wanted, null, 2) + '\n', 0o644)
  }
  return outcome
}

/**
 * Whether `dir` may go live: it holds something, and model verify's structure checks pass. With
 * MODEL_VERIFICATION_ENABLED=false a failure is only warned about. Returns the refusal, or null.
 */
export async function verificationRefusal(ctx: TaskContext, dir: string): Promise<string | null> {
  // The gate of model verify, from the headers alone: a download cut short, a shard missing from its index,
  // a tensor outside its file, config JSON that does not parse. (Hashes are model verify's own, run before.)
  const entries = await fs.readdir(dir).catch(() => [])
  const found = entries.length === 0 ? [`${dir} is empty`] : checkModelStructure(dir).problems.map((p) => `${p.path}: ${p.detail}`)
  const problem = found.length ? `${dir} fails model verify: ${summarize(found)}` : null
  if (!problem) return null
  if (ctx.settings.modelVerificationEnabled) return `${problem}: refusing to make it live (MODEL_VERIFICATION_ENABLED=true)`
  ctx.warn(`${problem}; made live anyway, as MODEL_VERIFICATION_ENABLED=false`)
  return null
}
