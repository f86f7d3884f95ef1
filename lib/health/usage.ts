// Disk and inode usage of the filesystems that hold the three roots. Read with statfs and
// /proc/self/mountinfo, never an external command, so `citadel status` stays fast. Verdicts hold through
// small dips (hysteresis), so the monitor does not alert and clear on every sample near a threshold.
import fs from 'node:fs/promises'
import { worse, type Problem, type Severity } from '../core/problems.ts'
import type { Settings } from '../infra/config.ts'
import { bytes, percent } from '../infra/format.ts'

/** A usage alert clears only below its threshold minus this. */
export const CLEAR_MARGIN = 0.05

/**
 * The level of `ratio`, except that a level the monitor holds is kept until the ratio falls below its
 * threshold minus CLEAR_MARGIN. Holding critical implies warning was crossed too, so critical falls to
 * warning, not ok, while the ratio is still within the margin of the warning threshold.
 */
export function levelOf(ratio: number, warning: number, critical: number, held: Severity = 'ok'): Severity {
  if (ratio >= critical || (held === 'critical' && ratio >= critical - CLEAR_MARGIN)) return 'critical'
  if (ratio >= warning || (held !== 'ok' && ratio >= warning - CLEAR_MARGIN)) return 'warning'
  return 'ok'
}

export type RootName = 'models' | 'backup' | 'app'

export interface FilesystemUsage {
  mount: string
  source: string
  fstype: string
  roots: { name: RootName; path: string }[]
  size_bytes: number
  used_bytes: number
  /** What non-root users can still write: the blocks reserved for root are not counted. */
  available_bytes: number
  /** used / (used + available), as df computes it. */
  used_ratio: number
  inodes_total: number
  inodes_used: number
  inodes_free: number
  /** null where the filesystem does not count inodes (btrfs and others report 0). */
  inodes_used_ratio: number | null
  disk: Severity
  inodes: Severity
  severity: Severity
  reasons: string[]
}

const ROOTS = [
  { name: 'models', setting: 'modelsRoot', env: 'CITADEL_MODELS_ROOT' },
  { name: 'backup', setting: 'backupRoot', env: 'CITADEL_BACKUP_ROOT' },
  { name: 'app', setting: 'appRoot', env: 'CITADEL_APP_ROOT' },
] as const

interface MountEntry { major: bigint; minor: bigint; mount: string; fstype: string; source: string }

const unescape = (field: string) => field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)))

/** /proc/self/mountinfo: "id parent major:minor root mount options [optional...] - fstype source superoptions". */
function parseMountinfo(text: string): MountEntry[] {
  return text.split('\n').filter((line) => line !== '').map((line) => {
    const fields = line.split(' ')
    const dash = fields.indexOf('-')
    const [major, minor] = fields[2]!.split(':').map(BigInt) as [bigint, bigint]
    return { major, minor, mount: unescape(fields[4]!), fstype: unescape(fields[dash + 1]!), source: unescape(fields[dash + 2]!) }
  })
}

const contains = (mount: string, p: string) => p === mount || p.startsWith(mount.endsWith('/') ? mount : mount + '/')

/**
 * The mount holding `realPath` on device `dev`: the deepest, and of equals the last mounted (it hides the
 * others). A btrfs subvolume has a device number of its own that mountinfo does not list; then the deepest
 * mount containing the path is the filesystem it lives on.
 */
function mountOf(mounts: MountEntry[], dev: bigint, realPath: string): MountEntry {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn)
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn)
  const deepest = (candidates: MountEntry[]) =>
    candidates.filter((m) => contains(m.mount, realPath)).reduce<MountEntry | undefined>((best, m) => (!best || m.mount.length >= best.mount.length ? m : best), undefined)
  const found = deepest(mounts.filter((m) => m.major === major && m.minor === minor)) ?? deepest(mounts)
  if (!found) throw new Error(`no mount in /proc/self/mountinfo holds ${realPath}`)
  return found
}

const points = (ratio: number) => +(ratio * 100).toFixed(1)
const names = (list: string[]) => (list.length === 1 ? list[0]! : `${list.slice(0, -1).join(', ')} and ${list.at(-1)!}`)

interface Verdict { level: Severity; reason: string }

function verdict(label: string, ratio: number, warning: number, critical: number, held: Severity, numbers: string): Verdict {
  const level = levelOf(ratio, warning, critical, held)
  const used = `${label}: ${percent(ratio)} used`
  if (level === 'ok') return { level, reason: `${used}, below the warning ${points(warning)}%` }
  const limit = level === 'critical' ? critical : warning
  const why = ratio >= limit
    ? `at or above the ${level} ${points(limit)}%`
    : `still within ${points(CLEAR_MARGIN)} points of the ${level} ${points(limit)}% it crossed`
  return { level, reason: `${used}, ${why} (${numbers})` }
}

async function measure(dev: bigint, realPath: string, roots: FilesystemUsage['roots'], mounts: MountEntry[], settings: Settings, held: ReadonlyMap<string, Severity>) {
  const { mount, source, fstype } = mountOf(mounts, dev, realPath)
  const s = await fs.statfs(realPath)
  const used = (s.blocks - s.bfree) * s.bsize
  const available = s.bavail * s.bsize
  const inodesUsed = s.files - s.ffree
  const usage = {
    mount, source, fstype, roots,
    size_bytes: s.blocks * s.bsize,
    used_bytes: used,
    available_bytes: available,
    used_ratio: used + available > 0 ? used / (used + available) : 0,
    inodes_total: s.files,
    inodes_used: inodesUsed,
    inodes_free: s.ffree,
    inodes_used_ratio: s.files > 0 ? inodesUsed / s.files : null,
  }
  const who = names(roots.map((r) => r.name))
  const { monitor } = settings
  const disk = verdict(`${who} disk ${mount}`, usage.used_ratio, monitor.diskWarning, monitor.diskCritical, held.get(`filesystems:${mount}:disk`) ?? 'ok',
    `${bytes(used)} used, ${bytes(available)} left of ${bytes(usage.size_bytes)}`)
  const inodes: Verdict = usage.inodes_used_ratio === null
    ? { level: 'ok', reason: `${who} inodes ${mount}: not counted by ${fstype}, no inode verdict` }
    : verdict(`${who} inodes ${mount}`, usage.inodes_used_ratio, monitor.inodeWarning, monitor.inodeCritical, held.get(`filesystems:${mount}:inodes`) ?? 'ok',
      `${inodesUsed} of ${s.files} inodes used, ${s.ffree} left`)
  const entry: FilesystemUsage = { ...usage, disk: disk.level, inodes: inodes.level, severity: worse(disk.level, inodes.level), reasons: [disk.reason, inodes.reason] }
  const problems: Problem[] = ([['disk', disk], ['inodes', inodes]] as const).flatMap(([kind, v]) =>
    v.level === 'ok' ? [] : [{ check: 'filesystems' as const, severity: v.level, key: `filesystems:${mount}:${kind}`, message: v.reason }])
  return { entry, problems }
}

/**
 * Usage of each filesystem holding the models, backup or app root, once per filesystem, with a Problem per
 * threshold crossed and per root that does not exist. `held`: the level the monitor holds per problem key.
 */
export async function filesystemUsage(settings: Settings, held: ReadonlyMap<string, Severity> = new Map()): Promise<{ filesystems: FilesystemUsage[]; problems: Problem[] }> {
  const problems: Problem[] = []
  const devices = new Map<bigint, { realPath: string; roots: FilesystemUsage['roots'] }>()
  for (const { name, setting, env } of ROOTS) {
    const root = settings[setting]
    let dev: bigint
    try {
      dev = (await fs.stat(root, { bigint: true })).dev
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw err
      problems.push({ check: 'filesystems', severity: 'critical', key: `filesystems:${root}:missing`, message: `${name} root ${root} does not exist (${env})` })
      continue
    }
    const device = devices.get(dev)
    if (device) device.roots.push({ name, path: root })
    else devices.set(dev, { realPath: await fs.realpath(root), roots: [{ name, path: root }] })
  }
  const mounts = parseMountinfo(await fs.readFile('/proc/self/mountinfo', 'utf8'))
  const measured = await Promise.all([...devices].map(([dev, d]) => measure(dev, d.realPath, d.roots, mounts, settings, held)))
  return { filesystems: measured.map((m) => m.entry), problems: [...problems, ...measured.flatMap((m) => m.problems)] }
}
