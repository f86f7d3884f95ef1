// MODEL_REGISTRY is the one record of which directory each alias serves. promote and rollback change it
// where the operator keeps it: the one MODEL_REGISTRY line of the env file citadel loaded, rewritten in
// place (only the alias's directory, every other byte of the file as it was), and published by rename.
import { promises as fs } from 'node:fs'
import { parse as parseDotenv } from 'dotenv'
import type { TaskContext } from '../core/task.ts'
import { dotenvLines, SETTINGS, type ModelEntry, type Settings } from '../infra/config.ts'
import { atomicWriteFile, describeEntry, lstatOrNull } from '../infra/fsx.ts'

/** The registry with `alias` serving `dir`: its pair changed where it stands, or a new pair at the end. */
export function withAlias(models: readonly ModelEntry[], alias: string, dir: string): ModelEntry[] {
  return models.some((m) => m.alias === alias) ? models.map((m) => (m.alias === alias ? { alias, dir } : m)) : [...models, { alias, dir }]
}

const QUOTES = new Set(["'", '"', '`'])

/** The value text (inside its quotes) with `alias`'s directory replaced, or `alias=dir` appended: separators and spacing kept. */
function editPairs(inner: string, alias: string, dir: string): string {
  let at = 0
  for (const part of inner.split(',')) {
    const eq = part.indexOf('=')
    if (eq >= 0 && part.slice(0, eq).trim() === alias) {
      const value = part.slice(eq + 1)
      const lead = value.length - value.trimStart().length
      const start = at + eq + 1 + lead
      return inner.slice(0, start) + dir + inner.slice(start + value.trim().length)
    }
    at += part.length + 1
  }
  const kept = inner.trimEnd()
  return `${kept}${kept === '' || kept.endsWith(',') ? '' : ','}${alias}=${dir}${inner.slice(kept.length)}`
}

/** Whether `next` means what `text` means with MODEL_REGISTRY as `models`, to dotenv and to the registry's parser. */
function sameButRegistry(text: string, next: string, models: ModelEntry[]): boolean {
  const before = parseDotenv(Buffer.from(text))
  const after = parseDotenv(Buffer.from(next))
  const others = (o: Record<string, string>) => JSON.stringify(Object.entries(o).filter(([k]) => k !== 'MODEL_REGISTRY').sort(([a], [b]) => (a < b ? -1 : 1)))
  const parsed = SETTINGS.MODEL_REGISTRY.schema.safeParse(after.MODEL_REGISTRY ?? '')
  return others(before) === others(after) && parsed.success && JSON.stringify(parsed.data) === JSON.stringify(models)
}

/**
 * The env file's text with MODEL_REGISTRY giving `alias` the directory `dir`: the definition dotenv takes
 * (the last) edited in place, its quotes, comment and line ending kept; a file without one gets a line at
 * its end. Throws one line when the edit would not read back as the wanted registry (a quote character
 * in the directory's name, say) or change any other setting.
 */
export function rewriteRegistry(text: string, current: readonly ModelEntry[], alias: string, dir: string, file: string): string {
  const wanted = withAlias(current, alias, dir)
  // dotenv reads CR LF as LF: a CR read as a blank keeps every offset of the pattern's match that of the file.
  const scan = text.replace(/\r/g, ' ')
  const pattern = new RegExp(dotenvLines().source, dotenvLines().flags + 'd')
  let last: RegExpExecArray | null = null
  for (const m of scan.matchAll(pattern)) if (m[1] === 'MODEL_REGISTRY') last = m
  let next: string
  if (!last) {
    const eol = text.includes('\r\n') ? '\r\n' : '\n'
    const value = wanted.map((m) => `${m.alias}=${m.dir}`).join(',')
    next = `${text}${text === '' || text.endsWith('\n') ? '' : eol}MODEL_REGISTRY=${value}${eol}`
  } else {
    const indices = last.indices!
    let [start, end] = indices[2] ?? [indices[1]![1], indices[1]![1]]
    if (!indices[2]) start = end = indices[1]![1] + (/^\s*=|^:/.exec(scan.slice(indices[1]![1]))?.[0].length ?? 0)
    const raw = text.slice(start, end)
    const lead = raw.length - raw.trimStart().length
    const core = raw.trim()
    const quoted = core.length >= 2 && QUOTES.has(core[0]!) && core.endsWith(core[0]!)
    const inner = quoted ? core.slice(1, -1) : core
    const edited = editPairs(inner, alias, dir)
    next = text.slice(0, start + lead) + (quoted ? core[0] + edited + core[0] : edited) + text.slice(start + lead + core.length)
  }
  if (!sameButRegistry(text, next, wanted))
    throw new Error(`cannot write ${alias}=${dir} into MODEL_REGISTRY of ${file} so that it reads back as written (a quote, "#" or backslash in the name, or a value spread over lines?): set MODEL_REGISTRY there by hand`)
  return next
}

/** Where MODEL_REGISTRY comes from when promote must not rewrite the env file, as one line saying what to do; null when it may. */
export function registryRefusal(settings: Settings, file: string, installed: Map<string, [string, string][]>): string | null {
  if (settings.sources.MODEL_REGISTRY === 'environment')
    return `MODEL_REGISTRY is set in the environment of this run, which overrides ${file}: promote and rollback change only that file; unset MODEL_REGISTRY (or change it where it is set) and rerun`
  for (const [unit, vars] of installed) {
    if (vars.some(([name]) => name === 'MODEL_REGISTRY'))
      return `MODEL_REGISTRY is installed in the systemd unit ${unit} (Environment=, taken from the environment of an earlier install-services) and overrides ${file} for the services: unset it, rerun \`citadel run install-services\`, then promote`
    const theirs = vars.find(([name]) => name === 'CITADEL_ENV_FILE')?.[1]
    if (theirs !== undefined && theirs !== file)
      return `the systemd unit ${unit} reads its settings from ${theirs} (CITADEL_ENV_FILE), this run from ${file}: run with CITADEL_ENV_FILE=${theirs}, or rerun \`citadel run install-services\` with this one`
  }
  return null
}

/**
 * Rewrites `file`'s MODEL_REGISTRY so that `alias` serves `dir`, through ctx.apply with the whole file as
 * before and after (--diff shows the one line) and an undo that puts the old content back. The file is
 * written by rename with its mode and owner kept; a link to it is followed, so the file it names changes.
 */
export async function ensureRegistry(ctx: TaskContext, file: string, alias: string, dir: string): Promise<'ok' | 'fixed'> {
  const real = await fs.realpath(file).catch(() => file)
  const st = await lstatOrNull(real)
  if (!st?.isFile()) throw new Error(`${file} is ${describeEntry(st)}, expected the env file MODEL_REGISTRY is kept in (CITADEL_ENV_FILE)`)
  const text = await fs.readFile(real, 'utf8')
  const next = rewriteRegistry(text, ctx.settings.models, alias, dir, file)
  if (next === text) return 'ok'
  const mode = st.mode & 0o7777
  await ctx.apply({ path: real, action: 'update file', before: text, after: next }, { op: 'restore-file', path: real, content: text, mode }, async () => {
    await atomicWriteFile(real, next, mode)
    if (process.getuid?.() === 0 && (st.uid !== 0 || st.gid !== 0)) await fs.chown(real, st.uid, st.gid)
  })
  return 'fixed'
}
