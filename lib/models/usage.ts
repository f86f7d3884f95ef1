// Which running processes have files of a model directory open or mapped: vLLM mmaps its safetensors and
// may have closed the descriptors, so /proc/*/fd alone would miss it, and /proc/*/maps alone would miss a
// copy in progress. Processes come and go while /proc is read, and another user's are unreadable without
// root: a process that vanished or refused is skipped, never an error.
import { promises as fs } from 'node:fs'
import path from 'node:path'

export interface Holder {
  pid: number
  /** Its command line as /proc shows it (the kernel's short name when that is empty). */
  command: string
  /** open: a descriptor on the file; mapped: a mapping of it. */
  how: 'open' | 'mapped'
  /** The file's path inside the model directory. */
  file: string
}

/** errno codes of a process that ended, or is not ours to read, between listing /proc and reading its entries. */
const GONE = new Set(['ENOENT', 'ESRCH', 'EACCES', 'EPERM', 'ENOTDIR'])

async function tolerant<T>(read: () => Promise<T>, fallback: T): Promise<T> {
  try {
    return await read()
  } catch (err) {
    if (GONE.has((err as NodeJS.ErrnoException).code ?? '')) return fallback
    throw err
  }
}

// The kernel appends this to the path of an unlinked file; its space is still held until the process lets go.
const DELETED = ' (deleted)'
const stripDeleted = (p: string) => (p.endsWith(DELETED) ? p.slice(0, -DELETED.length) : p)

/** The pathname column of /proc/PID/maps lines: after five fields separated by runs of spaces. */
export function mappedPaths(maps: string): string[] {
  const found = new Set<string>()
  for (const line of maps.split('\n')) {
    const m = /^\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+(\/.*)$/.exec(line)
    if (m) found.add(stripDeleted(m[1]!))
  }
  return [...found]
}

async function commandOf(pid: number): Promise<string> {
  const cmdline = await tolerant(() => fs.readFile(`/proc/${pid}/cmdline`, 'utf8'), '')
  // One line whatever the arguments hold: a `python3 -c` script spans many.
  const shown = cmdline.replace(/[\0\s]+/g, ' ').trim()
  if (shown) return shown.length > 120 ? shown.slice(0, 117) + '...' : shown
  return (await tolerant(() => fs.readFile(`/proc/${pid}/comm`, 'utf8'), '?')).trim()
}

/**
 * The processes (other than this one) holding files below each of `dirs`, keyed by the directory as given.
 * `dirs` are compared by their real paths, as the kernel reports them.
 */
export async function holdersOf(dirs: readonly string[]): Promise<Map<string, Holder[]>> {
  const result = new Map<string, Holder[]>(dirs.map((d) => [d, []]))
  const real: [string, string][] = []
  for (const dir of dirs) real.push([dir, await fs.realpath(dir).catch(() => path.resolve(dir))])
  if (!real.length) return result
  const owner = (file: string) => real.find(([, r]) => file === r || file.startsWith(r + '/'))?.[0]
  const pids = (await fs.readdir('/proc')).filter((n) => /^\d+$/.test(n)).map(Number).filter((pid) => pid !== process.pid)
  for (const pid of pids) {
    const found: (Omit<Holder, 'command'> & { dir: string })[] = []
    const seen = new Set<string>()
    const note = (how: Holder['how'], file: string) => {
      const dir = owner(file)
      if (dir === undefined || seen.has(`${how} ${file}`)) return
      seen.add(`${how} ${file}`)
      found.push({ pid, how, dir, file: path.relative(real.find(([d]) => d === dir)![1], file) || '.' })
    }
    const fds = await tolerant(() => fs.readdir(`/proc/${pid}/fd`), [] as string[])
    for (const fd of fds) {
      const target = await tolerant(() => fs.readlink(`/proc/${pid}/fd/${fd}`), null)
      if (target?.startsWith('/')) note('open', stripDeleted(target))
    }
    for (const file of mappedPaths(await tolerant(() => fs.readFile(`/proc/${pid}/maps`, 'utf8'), ''))) note('mapped', file)
    if (!found.length) continue
    const command = await commandOf(pid)
    for (const { dir, ...h } of found) result.get(dir)!.push({ ...h, command })
  }
  return result
}

/** "pid 4242 (vllm serve ...) has config.json open, model.safetensors mapped": one line per process. */
export function describeHolders(holders: readonly Holder[]): string[] {
  const byPid = new Map<number, Holder[]>()
  for (const h of holders) byPid.set(h.pid, [...(byPid.get(h.pid) ?? []), h])
  return [...byPid].map(([pid, hs]) => {
    const what = (how: Holder['how']) => hs.filter((h) => h.how === how).map((h) => h.file)
    const parts = (['open', 'mapped'] as const).map((how) => [how, what(how)] as const).filter(([, files]) => files.length)
    const shown = (files: string[]) => files.slice(0, 2).join(', ') + (files.length > 2 ? ` and ${files.length - 2} more` : '')
    return `pid ${pid} (${hs[0]!.command}) has ${parts.map(([how, files]) => `${shown(files)} ${how}`).join(', ')}`
  })
}
