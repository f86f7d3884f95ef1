// Where model directories live on the model disk, and how an operator names one: by its alias in
// MODEL_REGISTRY (its active directory), or by its directory's name in active/, staging/, archive/ or
// downloads/. A name is one path component, so it can never reach outside those places.
import path from 'node:path'
import { z } from 'zod'
import type { Settings } from '../infra/config.ts'
import { lstatOrNull } from '../infra/fsx.ts'

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

const isDir = async (p: string) => (await lstatOrNull(p))?.isDirectory() ?? false

/** A name's directory, or the one line that says why there is none. */
async function findOne(s: Settings, wanted: string): Promise<ModelDir | string> {
  const model = s.models.find((m) => m.alias === wanted)
  if (model) {
    const dir = path.join(s.modelsActive, model.dir)
    return (await isDir(dir)) ? { name: model.dir, place: 'active', path: dir, alias: model.alias } : `alias ${wanted}: its directory ${dir} does not exist (not fetched or promoted yet)`
  }
  const found: ModelDir[] = []
  for (const place of PLACES) {
    const dir = path.join(placeDir(s, place), wanted)
    if (await isDir(dir)) found.push({ name: wanted, place, path: dir, alias: place === 'active' ? (s.models.find((m) => m.dir === wanted)?.alias ?? null) : null })
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
      const dir = path.join(s.modelsActive, m.dir)
      if (await isDir(dir)) dirs.push({ name: m.dir, place: 'active', path: dir, alias: m.alias })
      else pending.push(m.alias)
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
