// The models as monitoring sees them: each alias's live version (how long it has served, and what its last
// model verify found), the downloads model fetch left unfinished, and what archive/ and staging/ take of the
// model disk. Read from the hash records, models.json and the directories alone: nothing is hashed here.
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { z } from 'zod'
import { problemSchema, type Problem } from '../core/problems.ts'
import type { Settings } from '../infra/config.ts'
import { bytes, count, DAY_MS, duration, percent } from '../infra/format.ts'
import { lstatOrNull } from '../infra/fsx.ts'
import { walkTree } from '../infra/tree.ts'
import { scanStore, storeMissing } from '../backup/local-store.ts'
import { parseManifestBytes } from '../backup/manifest.ts'
import { chainOf, MANIFEST } from '../backup/store.ts'
import { hashRecordFile, readHashRecord } from '../models/hashes.ts'
import { placeDir } from '../models/places.ts'
import { aliasLink, readModelsState, type ModelsState } from '../models/promote.ts'

export interface AliasHealth {
  alias: string
  dir: string
  path: string
  /** Whether the directory is in active/ (a model not fetched yet is not). */
  present: boolean
  /** When this version went live, and what says so. */
  live_since: { at: string; age_seconds: number; source: 'models.json' | 'link' } | null
  last_verification: { at: string; age_seconds: number; sample: boolean; ok: boolean; problems: { path: string; detail: string }[] } | null
  /** For a failed verification: the newest backup whose copy of the first failing file has the hash recorded for it. */
  restore_from: string | null
}

export interface PartialDownload { name: string; path: string; bytes: number; last_write: string; age_seconds: number }

export interface ModelsHealth {
  aliases: AliasHealth[]
  partials: PartialDownload[]
  archive_bytes: number
  staging_bytes: number
  /** The size of the filesystem holding the models root; null when it cannot be read. */
  disk_bytes: number | null
  problems: Problem[]
}

const seconds = z.number().int()
const fileProblem = z.strictObject({ path: z.string(), detail: z.string() })

export const modelsHealthSchema = z.strictObject({
  aliases: z.array(z.strictObject({
    alias: z.string(),
    dir: z.string().describe('its directory in active/, as MODEL_REGISTRY names it'),
    path: z.string(),
    present: z.boolean().describe('false while the directory is not in active/ (not fetched or promoted yet)'),
    live_since: z.strictObject({
      at: z.iso.datetime(),
      age_seconds: seconds,
      source: z.enum(['models.json', 'link']).describe("models.json: the time promote or rollback archived the version this one replaced; link: the alias link's own time (written by the flip), for a first version that replaced none"),
    }).nullable().describe('when this version went live; null when neither says'),
    last_verification: z.strictObject({
      at: z.iso.datetime(),
      age_seconds: seconds,
      sample: z.boolean().describe('true for a --sample run (weekly), false when every file was hashed'),
      ok: z.boolean(),
      problems: z.array(fileProblem),
    }).nullable().describe('the last model verify of the directory; null when none was kept'),
    restore_from: z.string().nullable().describe("after a failed verification: the newest backup whose manifest holds the first failing file with the hash recorded for it (a full backup made after the damage holds the damage)"),
  })).describe('every MODEL_REGISTRY alias with its live version'),
  partials: z.array(z.strictObject({
    name: z.string(), path: z.string(), bytes: z.number().int().nonnegative(),
    last_write: z.iso.datetime().describe('the newest modification time of the partial or of a file in it'),
    age_seconds: seconds,
  })).describe('downloads model fetch has not finished (downloads/<name>.partial)'),
  archive_bytes: z.number().int().nonnegative().describe("bytes of archive/'s files"),
  staging_bytes: z.number().int().nonnegative().describe("bytes of staging/'s files"),
  disk_bytes: z.number().int().nonnegative().nullable().describe('size of the filesystem holding the models root'),
  problems: z.array(problemSchema).describe('the problems of this part: also in the report\'s problems'),
}) satisfies z.ZodType<ModelsHealth>

const PARTIAL = '.partial'
const ageOf = (iso: string, now: Date) => Math.floor((now.getTime() - Date.parse(iso)) / 1000)
const ago = (ageS: number) => `${duration(ageS * 1000)} ago`
const problem = (severity: Problem['severity'], what: string, message: string): Problem => ({ check: 'models', severity, key: `models:${what}`, message })

/** Bytes of the files below `dir` and the newest modification time there (the directory's own included); nothing when it is missing. */
function treeFigures(dir: string): { bytes: number; newestMs: number } {
  try {
    const files = walkTree(dir).files
    return { bytes: files.reduce((sum, f) => sum + f.size, 0), newestMs: files.reduce((newest, f) => Math.max(newest, f.mtimeMs), 0) }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { bytes: 0, newestMs: 0 }
    throw err
  }
}

/**
 * When the alias's version went live. promote and rollback archive the version they replace at the flip,
 * so the newest archived_at of the alias is that moment; a first version replaced none, and then the alias
 * link, which the flip wrote by rename, carries it. The directory's own time is when its files last changed
 * (the fetch), not when it began to serve.
 */
async function liveSince(s: Settings, state: ModelsState | null, alias: string, now: Date): Promise<AliasHealth['live_since']> {
  const archivedAt = (state?.aliases[alias]?.archived ?? []).map((v) => v.archived_at).filter((at) => !Number.isNaN(Date.parse(at))).sort().at(-1)
  if (archivedAt) {
    const at = new Date(archivedAt).toISOString()
    return { at, age_seconds: ageOf(at, now), source: 'models.json' }
  }
  const link = await lstatOrNull(aliasLink(s, alias))
  if (!link?.isSymbolicLink()) return null
  const at = link.mtime.toISOString()
  return { at, age_seconds: ageOf(at, now), source: 'link' }
}

/**
 * The newest backup of the active models whose manifest lists `dir/rel` with `sha256`. Not simply the latest:
 * a full backup copies what it finds, so one made after the file went bad holds it bad.
 */
async function goodCopy(s: Settings, dir: string, rel: string, sha256: string): Promise<string | null> {
  if (await storeMissing(s)) return null
  const wanted = `${dir}/${rel}`
  for (const b of chainOf(await scanStore(s), s.modelsActive).reverse()) {
    const manifest = await fs.readFile(path.join(b.dir, MANIFEST)).then(parseManifestBytes).catch(() => [])
    if (manifest.some((e) => e.path === wanted && e.sha256 === sha256)) return b.name
  }
  return null
}

async function aliasHealth(s: Settings, state: ModelsState | null, alias: string, dir: string, now: Date, warn: (m: string) => void): Promise<AliasHealth> {
  const where = path.join(s.modelsActive, dir)
  const present = (await lstatOrNull(where))?.isDirectory() ?? false
  const record = present ? await readHashRecord(hashRecordFile(s, dir), warn) : null
  const run = record?.last_run
  const failing = run && !run.ok ? run.problems[0] : undefined
  const recorded = failing && record!.files[failing.path]
  return {
    alias, dir, path: where, present,
    live_since: present ? await liveSince(s, state, alias, now) : null,
    last_verification: run ? { at: run.at, age_seconds: ageOf(run.at, now), sample: run.sample, ok: run.ok, problems: run.problems } : null,
    restore_from: recorded ? await goodCopy(s, dir, failing.path, recorded.sha256) : null,
  }
}

async function partialDownloads(s: Settings, now: Date): Promise<PartialDownload[]> {
  const downloads = placeDir(s, 'downloads')
  const found: PartialDownload[] = []
  for (const name of (await fs.readdir(downloads).catch(() => [] as string[])).sort()) {
    if (!name.endsWith(PARTIAL)) continue
    const dir = path.join(downloads, name)
    const st = await lstatOrNull(dir)
    if (!st?.isDirectory()) continue
    // A copy in progress appends to a file without touching its directory: the newest file says when it last moved.
    const tree = treeFigures(dir)
    const last = new Date(Math.max(st.mtimeMs, tree.newestMs)).toISOString()
    found.push({ name, path: dir, bytes: tree.bytes, last_write: last, age_seconds: ageOf(last, now) })
  }
  return found
}

function verificationProblem(a: AliasHealth): Problem | null {
  const v = a.last_verification
  if (!v || v.ok) return null
  const first = v.problems[0]
  const more = v.problems.length > 1 ? ` (and ${count(v.problems.length - 1, 'more file problem')})` : ''
  const what = first ? `${first.path} ${first.detail}${more}` : 'no detail kept'
  const verifyAgain = `citadel model verify ${a.alias}`
  const fix = !first ? `run ${verifyAgain}`
    : a.restore_from ? `restore it with citadel backup restore ${a.restore_from} --path ${a.dir}/${first.path} (the newest backup holding it as recorded), then ${verifyAgain}`
    : `restore it with citadel backup restore --path ${a.dir}/${first.path} (no backup on the backup disk is known to hold it as recorded: check the off-host store, or fetch the model again), then ${verifyAgain}`
  return problem('critical', `verify:${a.alias}`, `last verification of ${a.alias} (${a.dir}): ${ago(v.age_seconds)}, failed: ${what}: ${fix}`)
}

export async function modelsHealth(s: Settings, now = new Date()): Promise<ModelsHealth> {
  const problems: Problem[] = []
  let state: ModelsState | null = null
  try {
    state = await readModelsState(s)
  } catch (err) {
    problems.push(problem('warning', 'state', (err as Error).message))
  }
  const aliases: AliasHealth[] = []
  for (const m of s.models) {
    aliases.push(await aliasHealth(s, state, m.alias, m.dir, now, (message) => problems.push(problem('warning', `record:${m.alias}`, message))))
  }
  for (const a of aliases) {
    const p = verificationProblem(a)
    if (p) problems.push(p)
  }

  const partials = await partialDownloads(s, now)
  for (const p of partials.filter((d) => d.age_seconds * 1000 > DAY_MS)) {
    const name = p.name.slice(0, -PARTIAL.length)
    problems.push(problem('warning', `partial:${p.name}`, `downloads/${p.name} holds ${bytes(p.bytes)} of an unfinished download, last written ${ago(p.age_seconds)}: run the same citadel model fetch SOURCE --name ${name} again to resume it, or delete ${p.path} if that model is no longer wanted`))
  }

  const archive = treeFigures(placeDir(s, 'archive')).bytes
  const staging = treeFigures(placeDir(s, 'staging')).bytes
  const disk = await fs.statfs(s.modelsRoot).then((st) => st.blocks * st.bsize, () => null)
  const limit = s.monitor.archiveWarning
  if (disk && (archive + staging) / disk > limit) {
    problems.push(problem('warning', 'archive', `archive/ (${bytes(archive)}) and staging/ (${bytes(staging)}) use ${percent((archive + staging) / disk)} of the ${bytes(disk)} model disk, more than STORAGE_MONITOR_ARCHIVE_WARNING=${limit}: remove the oldest archived versions with citadel model remove DIR (citadel model list shows them and what each frees)`))
  }
  return { aliases, partials, archive_bytes: archive, staging_bytes: staging, disk_bytes: disk, problems }
}
