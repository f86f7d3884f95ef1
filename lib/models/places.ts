// Where model directories live on the model disk, and how an operator names one: by its alias in
// MODEL_REGISTRY (its active directory), or by its directory's name in active/, staging/, archive/ or
// downloads/. A name is one path component, so it can never reach outside those places.
import path from 'node:path'
import { z } from 'zod'
import type { ModelEntry, Settings } from '../infra/config.ts'
import { describeEntry, lstatOrNull } from '../infra/fsx.ts'

export const PLACES = ['active', 'staging', 'archive', 'downloads'] as const
export type Place = (typeof PLACES)[number]

export const placeDir = (s: Settings, place: Place) => (place === 'active' ? s.modelsActive : path.join(s.modelsRoot, place))

export interface ModelDir {
  /** The directory's own name: what its hash record is kept under. */
  name: string
  place: Place
  path: string
  /** The alias whose directory it is, when it is in active/. */
  alias: string | null
}

/** An alias or a directory name as typed: one path component. */
export const modelName = z.string().refine(
  (v) => v !== '' && v !== '.' && v !== '..' && !v.includes('/') && !v.includes('\0'),
  'expected an alias from MODEL_REGISTRY or the name of a directory in active/, staging/, archive/ or downloads/ (one name, no / and not . or ..)',
)

/** Why `dir` is not a model directory to verify, or null when it is one. */
async function notADir(dir: string): Promise<'missing' | string | null> {
  const st = await lstatOrNull(dir)
  if (!st) return 'missing'
  return st.isDirectory() ? null : `${dir} is ${describeEntry(st)}, not a directory: only a model directory citadel can see whole is verified`
}

/** The directory of an alias, or why there is none: `missing` when it is not there yet. */
async function aliasDir(s: Settings, model: ModelEntry): Promise<ModelDir | { missing: boolean; problem: string }> {
  const dir = path.join(s.modelsActive, model.dir)
  const wrong = await notADir(dir)
  if (wrong === null) return { name: model.dir, place: 'active', path: dir, alias: model.alias }
  return wrong === 'missing' ? { missing: true, problem: `alias ${model.alias}: its directory ${dir} does not exist (not fetched or promoted yet)` } : { missing: false, problem: `alias ${model.alias}: ${wrong}` }
}

/** A name's directory, or the one line that says why there is none. */
async function findOne(s: Settings, wanted: string): Promise<ModelDir | string> {
  const model = s.models.find((m) => m.alias === wanted)
  if (model) {
    const found = await aliasDir(s, model)
    return 'problem' in found ? found.problem : found
  }
  const found: ModelDir[] = []
  for (const place of PLACES) {
    const dir = path.join(placeDir(s, place), wanted)
    if ((await notADir(dir)) === null) found.push({ name: wanted, place, path: dir, alias: place === 'active' ? (s.models.find((m) => m.dir === wanted)?.alias ?? null) : null })
  }
  if (found.length === 1) return found[0]!
  if (found.length > 1) return `${wanted} is a directory in both ${found.map((d) => `${d.place}/`).join(' and ')}: its hash record would be ambiguous; rename one of them`
  const aliases = s.models.map((m) => m.alias)
  return `"${wanted}" is neither an alias in MODEL_REGISTRY (${aliases.join(', ') || 'none'}) nor a directory in active/, staging/, archive/ or downloads/ of ${s.modelsRoot}`
}

/**
 * The directories `wanted` names, or the one line about the first that names none. Nothing wanted: every
 * registered alias's active directory, and `pending` the aliases whose directory is not there yet.
 */
export async function findModelDirs(s: Settings, wanted: readonly string[]): Promise<{ dirs: ModelDir[]; pending: string[] } | { problem: string }> {
  if (wanted.length === 0) {
    const dirs: ModelDir[] = []
    const pending: string[] = []
    for (const m of s.models) {
      const found = await aliasDir(s, m)
      if (!('problem' in found)) dirs.push(found)
      else if (found.missing) pending.push(m.alias)
      else return { problem: found.problem }
    }
    return { dirs, pending }
  }
  const dirs = new Map<string, ModelDir>()
  for (const name of wanted) {
    const found = await findOne(s, name)
    if (typeof found === 'string') return { problem: found }
    dirs.set(found.path, found)
  }
  return { dirs: [...dirs.values()], pending: [] }
}
