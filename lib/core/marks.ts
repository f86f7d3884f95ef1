// Root marks: a small file of citadel's own at the top of each disk root it lays out, and the app root's
// memory of which marks it laid out. A missing mark is an empty mount point (the disk is not mounted), a
// different one is another disk: either way citadel must not write there, nor read it as its own.
import { randomUUID } from 'node:crypto'
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { z } from 'zod'
import type { Shell } from 'zx/core'
import type { Settings } from '../infra/config.ts'
import { describeEntry, lstatOrNull, readFileOrNull } from '../infra/fsx.ts'
import { stateDir } from '../infra/layout.ts'
import { parseFile } from '../infra/schemas.ts'
import type { Change } from './task.ts'

export type RootRole = 'models' | 'backup'
export const ROOT_ROLES: readonly RootRole[] = ['models', 'backup']
export const ROOT_SETTING: Record<RootRole, string> = { models: 'CITADEL_MODELS_ROOT', backup: 'CITADEL_BACKUP_ROOT' }
export const MARK_FILE = '.citadel-root.json'
/** The flag of mark-roots that lays out a replacement disk; every refusal names it. */
export const NEW_DISK_FLAG = '--new-disk'

const markSchema = z.object({
  format: z.literal(1),
  role: z.enum(['models', 'backup']),
  id: z.string().min(1),
  host: z.string(),
  created: z.string(),
  fs_uuid: z.string().min(1).nullable(),
})
export type Mark = z.infer<typeof markSchema>

const rememberedSchema = z.object({
  format: z.literal(1),
  roots: z.partialRecord(z.enum(['models', 'backup']), z.object({ id: z.string().min(1), path: z.string(), created: z.string() })),
})
export type Remembered = z.infer<typeof rememberedSchema>

export const rootPath = (s: Settings, role: RootRole) => (role === 'models' ? s.modelsRoot : s.backupRoot)
export const markFile = (root: string) => path.join(root, MARK_FILE)
export const rememberedFile = (s: Settings) => path.join(stateDir(s), 'roots.json')

/** The directories citadel lays out on a root: any of them there means the root was laid out before. */
const LAYOUT: Record<RootRole, string[]> = { models: ['active', 'archive', 'downloads', 'staging'], backup: ['models', 'system'] }

export async function readRemembered(s: Settings): Promise<Remembered> {
  const file = rememberedFile(s)
  const text = await readFileOrNull(file)
  return text === null ? { format: 1, roots: {} } : parseFile(rememberedSchema, file, text, "citadel's record of the root marks it laid out")
}

/** A device number as /proc/self/mountinfo prints it (major:minor, split as the kernel splits it). */
function deviceId(dev: bigint): string {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn)
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn)
  return `${major}:${minor}`
}

/** What is mounted where `dir` lives, from the kernel's own table; undefined when the table does not say. */
async function mountSource(dir: string): Promise<string | undefined> {
  const [{ dev }, table] = await Promise.all([fs.stat(dir, { bigint: true }), readFileOrNull('/proc/self/mountinfo')])
  const id = deviceId(dev)
  for (const line of table?.split('\n') ?? []) {
    const fields = line.split(' ')
    if (fields[2] !== id) continue
    // After the optional fields, " - " then the filesystem type and the source, with spaces as \040.
    const source = fields[fields.indexOf('-', 6) + 2]
    if (source !== undefined) return source.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)))
  }
  return undefined
}

/** udev's name for the device `source`, the same UUID findmnt and blkid report; null where udev keeps none. */
async function udevUuid(source: string): Promise<string | null> {
  const dir = '/dev/disk/by-uuid'
  const names = await fs.readdir(dir).catch(() => [] as string[])
  if (!names.length) return null
  const device = await fs.realpath(source).catch(() => source)
  for (const name of names) if ((await fs.realpath(path.join(dir, name)).catch(() => null)) === device) return name
  return null
}

/**
 * The UUID of the filesystem holding `dir`, where udev, findmnt or blkid know it (a tmpfs has none). Read in
 * the process where it can be (every task that declares a root asks, before it runs): blkid runs only where
 * udev keeps no names. Nothing is remembered between calls, as a long-running monitor must see a swapped disk
 * behind the same device name; calls at the same moment for one device share one lookup.
 */
export async function filesystemUuid($: Shell, dir: string): Promise<string | null> {
  const source = await mountSource(dir)
  if (source === undefined) {
    const out = await $({ nothrow: true })`findmnt -P -n -o UUID,SOURCE --target ${dir}`
    if (out.exitCode !== 0) return null
    const field = (name: string) => new RegExp(`${name}="([^"]*)"`).exec(out.stdout)?.[1] ?? ''
    return field('UUID') || (field('SOURCE').startsWith('/dev/') ? sourceUuid($, field('SOURCE')) : null)
  }
  return source.startsWith('/dev/') ? sourceUuid($, source) : null
}

const lookingUp = new Map<string, Promise<string | null>>()

function sourceUuid($: Shell, source: string): Promise<string | null> {
  let lookup = lookingUp.get(source)
  if (!lookup) {
    lookup = (async () => {
      const udev = await udevUuid(source)
      if (udev) return udev
      // Not from blkid's cache file, which trusts an entry checked a moment ago: a disk swapped behind the same
      // device name in that moment would keep the old one's UUID.
      const blkid = await $({ nothrow: true })`blkid -c /dev/null -s UUID -o value ${source}`
      return blkid.exitCode === 0 && blkid.stdout.trim() ? blkid.stdout.trim() : null
    })().finally(() => lookingUp.delete(source))
    lookingUp.set(source, lookup)
  }
  return lookup
}

export type RootVerdict = 'ok' | 'unmarked' | 'foreign'

export interface RootState {
  role: RootRole
  setting: string
  path: string
  verdict: RootVerdict
  /** One line: what is wrong and what to check; 'marked <id>' when ok. */
  reason: string
  mark: Mark | null
  remembered: Remembered['roots'][RootRole] | null
  fs_uuid: string | null
  is_dir: boolean
  /** The root is a directory that holds citadel's tree (laid out, maybe before marks existed). */
  laid_out: boolean
  /** The root is a directory with nothing in it. */
  empty: boolean
}

const mountHint = (root: string) => `is the disk mounted? check with findmnt ${root}`
const newDiskHint = `to lay out a replacement disk there, run citadel task mark-roots ${NEW_DISK_FLAG}`

export async function inspectRoot($: Shell, s: Settings, role: RootRole, remembered: Remembered): Promise<RootState> {
  const root = rootPath(s, role)
  const setting = ROOT_SETTING[role]
  const known = remembered.roots[role] ?? null
  const st = await fs.stat(root).catch(() => null)
  const base = { role, setting, path: root, mark: null, remembered: known, fs_uuid: null, is_dir: false, laid_out: false, empty: false }
  if (!st?.isDirectory()) return { ...base, verdict: 'unmarked', reason: `${setting} ${root} ${st ? `is ${describeEntry(st)}, not a directory` : 'does not exist'}: ${mountHint(root)}` }
  const names = await fs.readdir(root)
  const laid_out = LAYOUT[role].some((d) => names.includes(d))
  const fs_uuid = await filesystemUuid($, root)
  const seen = { ...base, fs_uuid, is_dir: true, laid_out, empty: names.length === 0 }
  const file = markFile(root)
  const text = await readFileOrNull(file)
  if (text === null) {
    const reason = known
      ? `${setting} ${root} has no citadel mark, but it was marked ${known.id} on ${known.created}: ${mountHint(root)}; ${newDiskHint}`
      : `${setting} ${root} has no citadel mark (${MARK_FILE}): ${laid_out ? 'it was laid out before citadel marked its roots; run citadel run initial-setup to mark it' : `${mountHint(root)}; on a new server run citadel run initial-setup`}`
    return { ...seen, verdict: 'unmarked', reason }
  }
  let mark: Mark
  try {
    mark = parseFile(markSchema, file, text, "a root mark citadel wrote")
  } catch (err) {
    return { ...seen, verdict: 'foreign', reason: `${setting} ${root}: ${(err as Error).message}; ${newDiskHint}` }
  }
  const marked = { ...seen, mark }
  const which = `mark ${mark.id} (written by ${mark.host} on ${mark.created})`
  if (mark.role !== role) return { ...marked, verdict: 'foreign', reason: `${setting} ${root} holds citadel's ${mark.role} root (${which}): check ${setting} and ${ROOT_SETTING[mark.role]}` }
  if (known && known.id !== mark.id) return { ...marked, verdict: 'foreign', reason: `${setting} ${root} holds ${which}, not ${known.id} that this app root laid out on ${known.created}: another disk? ${mountHint(root)}; ${newDiskHint}` }
  if (mark.fs_uuid && fs_uuid && mark.fs_uuid !== fs_uuid) return { ...marked, verdict: 'foreign', reason: `${setting} ${root} is on filesystem ${fs_uuid}, but ${which} belongs to filesystem ${mark.fs_uuid}: another disk with a copy of the mark? ${mountHint(root)}; ${newDiskHint}` }
  return { ...marked, verdict: 'ok', reason: `marked ${mark.id}` }
}

export async function inspectRoots($: Shell, s: Settings, roles: readonly RootRole[] = ROOT_ROLES): Promise<RootState[]> {
  const remembered = await readRemembered(s)
  return Promise.all(roles.map((role) => inspectRoot($, s, role, remembered)))
}

/**
 * Why a task that declares `roles` must not run now, or null. In check mode a mark an earlier task of the
 * run would write counts as written.
 */
export async function refusal($: Shell, s: Settings, roles: readonly RootRole[], planned: readonly Change[]): Promise<string | null> {
  let remembered: Remembered
  try {
    remembered = await readRemembered(s)
  } catch (err) {
    return (err as Error).message
  }
  const wouldMark = new Set(planned.map((c) => c.path))
  // Side by side: each root costs a findmnt (and maybe a blkid) before every task that declares it.
  const states = await Promise.all(roles.map((role) => inspectRoot($, s, role, remembered)))
  const refused = states.find((state) => state.verdict !== 'ok' && !wouldMark.has(markFile(state.path)))
  return refused ? `refused, nothing done: ${refused.reason}` : null
}

export const newMark = (role: RootRole, fs_uuid: string | null): Mark =>
  ({ format: 1, role, id: randomUUID(), host: os.hostname(), created: new Date().toISOString(), fs_uuid })

/** Whether the app root links into a models root already: a server set up before, not a new one. */
export const appLaidOut = async (s: Settings) => (await lstatOrNull(path.join(s.appRoot, 'models')))?.isSymbolicLink() ?? false
