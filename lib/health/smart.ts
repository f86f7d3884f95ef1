// SMART health: finds the disks under the model and backup roots, reads each with smartctl --json and
// gives it one verdict (healthy, warning, failing, unavailable) with its reasons in words and numbers.
// classifySmart is pure, so saved captures of real drives test every rule without a disk.
import { existsSync } from 'node:fs'
import type { Shell } from 'zx/core'
import type { Problem } from '../core/problems.ts'
import type { Settings } from '../infra/config.ts'
import { mountOf } from '../infra/system.ts'
import { count } from '../infra/format.ts'

export type SmartVerdict = 'healthy' | 'warning' | 'failing' | 'unavailable'

export interface SmartReport {
  device: string
  verdict: SmartVerdict
  reasons: string[]
  model: string | null
  serial: string | null
  protocol: string | null
  temperature_celsius: number | null
  power_on_hours: number | null
  nvme_percentage_used: number | null
  /** The raw counts the verdict used, e.g. reallocated_sectors, nvme_media_errors. */
  counts: Record<string, number>
  exit_status: number | null
  /** The citadel roots on this disk; [] when the device was named or read from a file. */
  roots: string[]
}

// A few remapped sectors are routine over a disk's life (the spare area exists for them) and earn a
// warning; hundreds mean the surface is degrading faster than the spares were sized for, and Backblaze's
// published drive statistics show failure rates climbing steeply with these counts. 100 is the line
// where we stop watching and replace the disk.
const FAILING_SECTORS = 100
// NVMe percentage_used is the share of the rated endurance written; at 80% there is time to order a spare.
const NVME_WEAR_WARNING = 80

/** ATA attributes whose raw value is a count of bad events; failsAt null means any count only warns. */
const ATA_COUNTS: Record<number, { key: string; noun: string; warns: boolean; failsAt: number | null }> = {
  5: { key: 'reallocated_sectors', noun: 'reallocated sector', warns: true, failsAt: FAILING_SECTORS },
  187: { key: 'reported_uncorrect', noun: 'reported uncorrectable error', warns: true, failsAt: null },
  188: { key: 'command_timeout', noun: 'command timeout', warns: true, failsAt: null },
  197: { key: 'pending_sectors', noun: 'pending sector', warns: true, failsAt: FAILING_SECTORS },
  198: { key: 'offline_uncorrectable', noun: 'offline uncorrectable sector', warns: true, failsAt: FAILING_SECTORS },
  // Counted but never a warning: CRC errors are the cable or backplane, not the disk, and the count never resets.
  199: { key: 'udma_crc_errors', noun: 'UDMA CRC error', warns: false, failsAt: null },
}

const NVME_CRITICAL_WARNINGS = ['available spare below threshold', 'temperature outside its thresholds', 'reliability degraded', 'media in read-only mode', 'volatile memory backup failed', 'persistent memory region unreliable']

/** smartctl's exit-status bits 3-7 (man smartctl): what the disk said about itself. */
const EXIT_BITS: Record<number, string> = {
  3: 'SMART status check returned "disk failing"',
  4: 'a pre-fail attribute is at or below its threshold',
  5: 'some attributes were at or below their threshold in the past',
  6: 'the device error log has errors',
  7: 'the self-test log has errors',
}

type Json = Record<string, unknown>
const obj = (v: unknown): Json | undefined => (v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Json) : undefined)
const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : [])
const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null)
const text = (v: unknown): string | null => (typeof v === 'string' && v.trim() !== '' ? v.trim() : null)
const firstLine = (s: string): string => s.split('\n').map((l) => l.trim()).find(Boolean) ?? ''

function parseJson(s: string): unknown {
  try {
    return JSON.parse(s)
  } catch {
    return undefined
  }
}

/** The count smartctl itself shows: its raw string applies the drive database's format ("36 (Min/Max 20/45)"). */
function rawCount(attr: Json): number | null {
  const raw = obj(attr.raw)
  const shown = /^\s*(\d+)/.exec(typeof raw?.string === 'string' ? raw.string : '')
  const n = shown ? Number(shown[1]) : num(raw?.value)
  // Seagate packs three 16-bit timeout counters into 188; when the drive database does not split them
  // ("2 2 2") the raw value reads 0x000400040004 = 17180131332, and the low counter is the count.
  return attr.id === 188 && n !== null && n > 0xffff ? n & 0xffff : n
}

/** Reasons found so far, by the verdict they call for, and the raw counts they read. */
interface Findings { failing: string[]; warning: string[]; counts: Record<string, number> }

const label = (a: Json): string => [num(a.id), text(a.name)].filter((x) => x !== null).join(' ')

function ataRules(attrs: Json[], exit: number | null, bit: (n: number) => boolean, f: Findings): void {
  const failedNow = attrs.filter((a) => a.when_failed === 'now')
  for (const a of failedNow) f.failing.push(`attribute ${label(a)} is at or below its failure threshold now (value ${a.value}, threshold ${a.thresh}, raw ${rawCount(a)})`)
  if (bit(4) && failedNow.length === 0) f.failing.push(`smartctl exit status ${exit}: ${EXIT_BITS[4]}`)
  for (const a of attrs.filter((x) => x.when_failed === 'past')) f.warning.push(`attribute ${label(a)} was at or below its threshold in the past (value ${a.value}, threshold ${a.thresh})`)
  for (const a of attrs) {
    const rule = typeof a.id === 'number' ? ATA_COUNTS[a.id] : undefined
    const n = rawCount(a)
    if (!rule || n === null) continue
    f.counts[rule.key] = n
    if (rule.failsAt !== null && n >= rule.failsAt) f.failing.push(`${count(n, rule.noun)} (${rule.failsAt} or more means replace the disk)`)
    else if (rule.warns && n > 0) f.warning.push(count(n, rule.noun))
  }
}

function nvmeRules(log: Json, f: Findings): void {
  const cw = num(log.critical_warning)
  const spare = num(log.available_spare)
  const spareThreshold = num(log.available_spare_threshold)
  const used = num(log.percentage_used)
  const mediaErrors = num(log.media_errors)
  const counts = { nvme_critical_warning: cw, nvme_media_errors: mediaErrors, nvme_available_spare: spare, nvme_available_spare_threshold: spareThreshold }
  for (const [key, value] of Object.entries(counts)) if (value !== null) f.counts[key] = value
  if (cw) {
    const named = [...Array(8).keys()].filter((i) => cw & (1 << i)).map((i) => NVME_CRITICAL_WARNINGS[i] ?? `bit ${i}`)
    f.failing.push(`NVMe critical warning 0x${cw.toString(16).padStart(2, '0')}: ${named.join(', ')}`)
  }
  if (spare !== null && spareThreshold !== null && spare < spareThreshold && ((cw ?? 0) & 1) === 0) f.failing.push(`NVMe available spare ${spare}% is below its threshold of ${spareThreshold}%`)
  if (used !== null && used >= 100) f.failing.push(`NVMe endurance used up: percentage used ${used}%`)
  else if (used !== null && used >= NVME_WEAR_WARNING) f.warning.push(`NVMe endurance ${used}% used (${NVME_WEAR_WARNING}% or more: plan its replacement)`)
  if (mediaErrors) f.failing.push(count(mediaErrors, 'NVMe media and data integrity error'))
}

function scsiRules(grown: number, f: Findings): void {
  f.counts.scsi_grown_defects = grown
  if (grown >= FAILING_SECTORS) f.failing.push(`${count(grown, 'grown defect')} on the SCSI defect list (${FAILING_SECTORS} or more means replace the disk)`)
  else if (grown > 0) f.warning.push(`${count(grown, 'grown defect')} on the SCSI defect list`)
}

const blank = (device: string, exit: number | null, reason: string): SmartReport => ({
  device, verdict: 'unavailable', reasons: [reason], model: null, serial: null, protocol: null, temperature_celsius: null,
  power_on_hours: null, nvme_percentage_used: null, counts: {}, exit_status: exit, roots: [],
})

/** The verdict on one smartctl --json document. Never throws: anything it cannot read is unavailable. */
export function classifySmart(doc: unknown, device: string, exitStatus?: number | null): SmartReport {
  const d = obj(doc)
  if (!d) return blank(device, exitStatus ?? null, 'not a smartctl --json document')
  const smartctl = obj(d.smartctl)
  const exit = exitStatus === undefined ? num(smartctl?.exit_status) : exitStatus
  const bit = (n: number) => exit !== null && (exit & (1 << n)) !== 0
  const messages = list(smartctl?.messages).map((m) => text(obj(m)?.string)).filter((m): m is string => m !== null)
  const temperature = obj(d.temperature)
  const nvme = obj(d.nvme_smart_health_information_log)
  const attrs = list(obj(d.ata_smart_attributes)?.table).map(obj).filter((a): a is Json => a !== undefined)
  const passed = obj(d.smart_status)?.passed
  const grown = num(d.scsi_grown_defect_list)
  const support = obj(d.smart_support)
  const current = num(temperature?.current) ?? num(nvme?.temperature)
  const report: SmartReport = {
    ...blank(device, exit, ''),
    model: text(d.model_name) ?? text(d.scsi_model_name) ?? text(d.product),
    serial: text(d.serial_number),
    protocol: text(obj(d.device)?.protocol),
    temperature_celsius: current,
    power_on_hours: num(obj(d.power_on_time)?.hours),
    nvme_percentage_used: num(nvme?.percentage_used),
  }
  const unavailable = (reason: string): SmartReport => ({ ...report, reasons: [reason] })

  // With -n standby smartctl leaves a sleeping disk alone: exit bit 1 and the message "Device is in
  // STANDBY mode, exit(2)" (or SLEEP, "STANDBY (OS)", "STANDBY BY COMMAND"); 7.4 and later add power_mode.
  const asleep = messages.find((m) => /\bdevice is in .+ mode\b/i.test(m))
  if (asleep) return unavailable(`${asleep.replace(/,?\s*exit\(\d+\)\s*$/, '')}: not woken up to read SMART`)
  // Bits 3-7 are the disk's own verdict, so they count as health information even in a trimmed capture.
  const hasHealth = typeof passed === 'boolean' || attrs.length > 0 || nvme !== undefined || grown !== null || (exit !== null && exit >> 3 !== 0)
  if (!hasHealth) {
    const powerMode = text(obj(d.power_mode)?.name)
    if (bit(1) && powerMode) return unavailable(`device is in ${powerMode} mode: not woken up to read SMART`)
    if (support?.available === false) return unavailable('SMART is not supported by this device (virtual disks and some USB bridges have none)')
    if (support?.enabled === false) return unavailable(`SMART is disabled on this device (smartctl -s on ${device} enables it)`)
    if (messages[0]) return unavailable(`${messages[0]} (smartctl exit status ${exit ?? 'unknown'})`)
    return unavailable(`no SMART health information in smartctl's output${exit ? ` (exit status ${exit})` : ''}`)
  }

  const f: Findings = { failing: [], warning: [], counts: {} }
  const cw = num(nvme?.critical_warning) ?? 0
  // An NVMe drive's passed is just "critical warning is zero": the named bits below say more.
  if (passed === false && cw === 0) f.failing.push('SMART overall-health self-assessment FAILED')
  if (bit(3) && passed !== false) f.failing.push(`smartctl exit status ${exit}: ${EXIT_BITS[3]}`)
  ataRules(attrs, exit, bit, f)
  if (nvme) nvmeRules(nvme, f)
  if (grown !== null) scsiRules(grown, f)
  const logged = [5, 6, 7].filter(bit).map((b) => EXIT_BITS[b])
  if (logged.length) f.warning.push(`smartctl exit status ${exit}: ${logged.join(', ')}`)
  // The drive's own limit: ATA SCT op_limit_max, NVMe WCTEMP (op_limit_max in newer smartctl) or the SCSI
  // trip temperature. Reaching it counts: NVMe defines WCTEMP as the first overheating value.
  const limit = num(temperature?.op_limit_max) ?? num(temperature?.drive_trip)
  if (current !== null && limit !== null && limit > 0 && current >= limit) f.warning.push(`temperature ${current} °C is at or above the drive's limit of ${limit} °C`)

  // RAID controllers pass some SMART commands through and refuse others (exit bit 2, sometimes 1), yet
  // what they did return is the disk's own data: judge that, and say the picture is partial.
  const notes: string[] = []
  if (bit(0) || bit(1) || bit(2)) notes.push(`partial data: smartctl exit status ${exit}${messages[0] ? ` (${messages[0]})` : ''}`)
  if (support?.enabled === false) notes.push(`SMART is disabled on this device (smartctl -s on ${device} enables it)`)
  const verdict: SmartVerdict = f.failing.length ? 'failing' : f.warning.length ? 'warning' : 'healthy'
  const summary = verdict !== 'healthy' ? [] : [passed === true ? 'SMART overall-health self-assessment passed' : 'no overall-health result; nothing wrong in what smartctl read']
  return { ...report, verdict, counts: f.counts, reasons: [...f.failing, ...f.warning, ...summary, ...notes] }
}

const leaves = (node: unknown): string[] => {
  const n = obj(node)
  const children = list(n?.children)
  if (children.length) return children.flatMap(leaves)
  const name = text(n?.name)
  return name ? [name] : []
}

/**
 * The physical disks under each root: findmnt names the filesystem's source, lsblk --inverse walks from it
 * down through partitions, LVM, dm-crypt and md to the disks (a loop device counts as one). A root that
 * is missing or on something other than a block device is a note, never an error.
 */
export async function findDisks($: Shell, roots: { name: string; path: string }[]): Promise<{ disks: { device: string; roots: string[] }[]; notes: string[] }> {
  const disks = new Map<string, string[]>()
  const notes: string[] = []
  for (const root of roots) {
    const where = `${root.name} root ${root.path}`
    if (!existsSync(root.path)) {
      notes.push(`${where} does not exist`)
      continue
    }
    let source: string
    let fstype: string
    try {
      const mount = await mountOf($, root.path)
      // A bind mount or btrfs subvolume shows as /dev/sda1[/subdir].
      source = mount.source.replace(/\[.*\]$/, '')
      fstype = mount.fstype
    } catch (err) {
      notes.push(`${where}: findmnt cannot tell which filesystem holds it (${firstLine((err as Error).message)})`)
      continue
    }
    if (!source.startsWith('/dev/')) {
      notes.push(`${where} is on ${source} (${fstype}), not a block device: no SMART data`)
      continue
    }
    const tree = await $({ nothrow: true })`lsblk --json --inverse --paths -o NAME,TYPE ${source}`
    const found = [...new Set(list(obj(parseJson(tree.stdout))?.blockdevices).flatMap(leaves))]
    if (tree.exitCode !== 0 || found.length === 0) {
      notes.push(`${where} is on ${source} (${fstype}), which lsblk cannot follow to a disk: ${firstLine(tree.stderr) || `exit ${tree.exitCode}`}`)
      continue
    }
    for (const disk of found) disks.set(disk, [...new Set([...(disks.get(disk) ?? []), root.name])])
  }
  return { disks: [...disks].map(([device, names]) => ({ device, roots: names })), notes }
}

/** One disk's verdict. -n standby leaves a sleeping disk asleep (the verdict says so) rather than spinning it up. */
export async function readSmart($: Shell, device: string, signal?: AbortSignal): Promise<SmartReport> {
  const out = await $({ nothrow: true, signal })`smartctl --json -a -n standby ${device}`
  if (signal?.aborted) throw signal.reason
  if (out.exitCode === 127) return blank(device, null, 'smartctl is not installed (apt-get install smartmontools)')
  // The exit status is a bit mask, non-zero for a failing disk too: the JSON is read whatever it is.
  const doc = parseJson(out.stdout)
  if (!obj(doc)) return blank(device, out.exitCode, `smartctl gave no JSON (exit ${out.exitCode}): ${firstLine(out.stderr) || firstLine(out.stdout) || 'no output'}`)
  return classifySmart(doc, device, out.exitCode)
}

/** Every disk under the model and backup roots, read in parallel, and the notes on roots without one. */
export async function smartHealth($: Shell, settings: Settings, signal?: AbortSignal): Promise<{ disks: SmartReport[]; notes: string[] }> {
  const { disks, notes } = await findDisks($, [{ name: 'models', path: settings.modelsRoot }, { name: 'backup', path: settings.backupRoot }])
  const reports = await Promise.all(disks.map(async (disk) => ({ ...(await readSmart($, disk.device, signal)), roots: disk.roots })))
  return { disks: reports, notes }
}

const describeDisk = (d: SmartReport): string => {
  const about = [d.model, d.serial && `serial ${d.serial}`].filter(Boolean).join(', ')
  return about ? `${d.device} (${about})` : d.device
}

export const smartProblems = (disks: SmartReport[]): Problem[] =>
  disks
    .filter((d) => d.verdict === 'failing' || d.verdict === 'warning')
    .map((d) => ({ check: 'smart', severity: d.verdict === 'failing' ? 'critical' : 'warning', key: `smart:${d.device}`, message: `${describeDisk(d)}: ${d.reasons.join('; ')}` }))
