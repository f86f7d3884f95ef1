// systemd: whether it runs here, the units `write-units` writes (rendered from the settings, every
// value escaped as systemd parses it), and the state of those units for `status` and `start-monitor`.
// Loaded by every command through tasks/index.ts: it imports nothing heavy and runs nothing on load.
import { lstatSync, readFileSync, realpathSync } from 'node:fs'
import path from 'node:path'
import type { Shell } from 'zx/core'
import type { Settings } from '../infra/config.ts'
import { isInside, projectRoot } from '../infra/fsx.ts'

export const MONITOR_UNIT = 'citadel-monitor.service'
export const TIMER_UNITS = ['citadel-daily.timer', 'citadel-weekly.timer'] as const
/** What `systemctl enable --now` gets: the monitor and the two timers (the timers start the oneshot services). */
export const ENABLED_UNITS = [MONITOR_UNIT, ...TIMER_UNITS]
export const UNIT_FILES = [MONITOR_UNIT, 'citadel-daily.service', 'citadel-daily.timer', 'citadel-weekly.service', 'citadel-weekly.timer']

/** A value that cannot be written into a unit so that systemd reads it back unchanged. */
export class UnitError extends Error {}

/** sd_booted(3): systemd is the init system exactly when /run/systemd/system is a directory. */
export function systemdRunning(root = '/run/systemd/system'): boolean {
  try {
    return lstatSync(root).isDirectory()
  } catch {
    return false
  }
}

// ---- Escaping. The rules, from systemd 252's man pages and checked against its parser (test/system/services.test.ts):
// - systemd.unit(5) "Specifiers": every setting below resolves %-specifiers, so a literal % is written %%.
// - systemd.syntax(7) "Quoting": settings that unquote take "..." around a whole item, with C-style escapes
//   inside (\\ and \"); a line ending in \ continues on the next line.
// - systemd.service(5) "Command lines": ExecStart= is unquoted as above; $FOO and ${FOO} in the arguments
//   are environment variables, a literal $ is $$. The executable itself is not expanded ($ stays $) and
//   may contain spaces but no control characters; systemd 252 also refuses quotes and backslashes in it
//   ("Executable name contains special characters").
// - systemd.exec(5): ReadWritePaths= is a space-separated list of paths that unquotes (a leading "-"
//   means "ignore if missing"); Environment= unquotes "VAR=value" items and expands no $; WorkingDirectory=,
//   User= and Group= take the rest of the line as it is (no quotes, no escapes; surrounding blanks are
//   stripped), so their values must not need any.
// A control character (a newline above all) cannot be written in every one of these, so none is accepted.

const CONTROL = /[\x00-\x1f\x7f]/
/** Characters that never need quoting in a unit: anything else is quoted. */
const BARE = /^[A-Za-z0-9_./:,+@=-]+$/

const specifiers = (value: string) => value.replaceAll('%', '%%')

function refuseControl(value: string, what: string): void {
  if (CONTROL.test(value)) throw new UnitError(`${what} ${JSON.stringify(value)} contains a control character (a newline?), which a systemd unit cannot hold`)
}

/** One item of a setting that unquotes (systemd.syntax "Quoting"). */
function quoted(value: string): string {
  return BARE.test(value) ? value : `"${value.replace(/[\\"]/g, (c) => `\\${c}`)}"`
}

/** The program of ExecStart=: quoted and %-escaped, never $-escaped (systemd does not expand it). */
export function execProgram(file: string, what: string): string {
  refuseControl(file, what)
  if (!path.isAbsolute(file)) throw new UnitError(`${what} ${file} is not an absolute path`)
  if (/["'\\]/.test(file)) throw new UnitError(`${what} ${JSON.stringify(file)} contains a quote or a backslash, which systemd refuses in the program of ExecStart=`)
  return specifiers(quoted(file))
}

/** An argument of ExecStart=: quoted, $ as $$ (no variable expansion), % as %%. */
export function execArgument(value: string, what: string): string {
  refuseControl(value, what)
  return specifiers(quoted(value.replace(/\$/g, () => '$$')))
}

/** One path of ReadWritePaths=, prefixed with "-": a disk that is not there does not keep the monitor from starting. */
export function rwPath(dir: string, what: string): string {
  refuseControl(dir, what)
  return specifiers(quoted(`-${dir}`))
}

/** One VAR=value item of Environment=. */
export function environmentItem(name: string, value: string): string {
  refuseControl(value, name)
  return specifiers(quoted(`${name}=${value}`))
}

/** A value taken verbatim to the end of the line (WorkingDirectory=, User=, Group=). */
export function verbatim(value: string, what: string): string {
  refuseControl(value, what)
  if (value !== value.trim() || value.endsWith('\\') || value === '') throw new UnitError(`${what} ${JSON.stringify(value)} is empty, starts or ends with a blank, or ends with a backslash: systemd would read it otherwise`)
  return specifiers(value)
}

// ---- The units.

export interface UnitFile { name: string; content: string }

/** Where the services find the same settings as this run: the env file, and whatever came from the environment. */
export function carriedEnvironment(s: Settings, env: NodeJS.ProcessEnv): [string, string][] {
  const carried: [string, string][] = []
  if (env.CITADEL_ENV_FILE) carried.push(['CITADEL_ENV_FILE', path.resolve(env.CITADEL_ENV_FILE)])
  for (const [name, source] of Object.entries(s.sources)) if (source === 'environment' && env[name] !== undefined) carried.push([name, env[name]!])
  return carried
}

/**
 * The Environment= items of citadel's unit files installed in `dir`, by unit: what the services get on top
 * of the env file (read back as environmentItem writes them). Units that are not there are left out.
 */
export function installedEnvironment(dir: string): Map<string, [string, string][]> {
  const found = new Map<string, [string, string][]>()
  for (const unit of UNIT_FILES) {
    let text: string
    try {
      text = readFileSync(path.join(dir, unit), 'utf8')
    } catch {
      continue
    }
    const items = text.split('\n').filter((line) => line.startsWith('Environment=')).map((line) => {
      const item = line.slice('Environment='.length).replaceAll('%%', '%')
      const plain = item.startsWith('"') && item.endsWith('"') ? item.slice(1, -1).replace(/\\(.)/g, '$1') : item
      const eq = plain.indexOf('=')
      return [plain.slice(0, eq), plain.slice(eq + 1)] as [string, string]
    })
    found.set(unit, items)
  }
  return found
}

const inside = (dir: string, p: string) => path.resolve(dir) === path.resolve(p) || isInside(dir, p)

/** The directories the monitor writes: the three roots, and the active models and metrics when they lie outside them. */
export function writablePaths(s: Settings): string[] {
  const dirs = [s.appRoot, s.modelsRoot, s.backupRoot]
  for (const extra of [s.modelsActive, path.dirname(s.monitor.prometheusFile)]) if (!dirs.some((d) => inside(d, extra))) dirs.push(extra)
  return dirs
}

const SETTING_OF_PATH: [(s: Settings) => string, string][] = [
  [(s) => s.appRoot, 'CITADEL_APP_ROOT'], [(s) => s.modelsRoot, 'CITADEL_MODELS_ROOT'], [(s) => s.backupRoot, 'CITADEL_BACKUP_ROOT'],
  [(s) => s.modelsActive, 'CITADEL_MODELS_ACTIVE'], [(s) => path.dirname(s.monitor.prometheusFile), 'STORAGE_MONITOR_PROMETHEUS_FILE'],
]

const runsAsRoot = (s: Settings) => !s.owner || s.owner.user === 'root' || s.owner.user === '0'

export interface RenderInput { settings: Settings; env: NodeJS.ProcessEnv; node?: string; root?: string }

/** Every unit write-units writes, in UNIT_FILES order. Throws UnitError for a value systemd cannot take. */
export function renderUnits({ settings: s, env, node = process.execPath, root = projectRoot() }: RenderInput): UnitFile[] {
  const script = path.join(root, 'bin', 'citadel.js')
  // systemd expands $ in argv[0] (though not in the program it runs): with a $ in node's path, "@" gives argv[0] apart.
  const program = node.includes('$') ? `@${execProgram(node, 'the node binary')} ${execArgument(node, 'the node binary')}` : execProgram(node, 'the node binary')
  const exec = (...args: string[]) => `ExecStart=${[program, execArgument(script, 'the citadel command'), ...args.map((a) => execArgument(a, 'argument'))].join(' ')}`
  const common = [
    `WorkingDirectory=${verbatim(root, 'the citadel checkout')}`,
    // The launcher's build cache: writable under ProtectSystem=strict, the unit's user's own (CACHE_DIRECTORY).
    'CacheDirectory=citadel',
    ...carriedEnvironment(s, env).map(([name, value]) => `Environment=${environmentItem(name, value)}`),
  ]
  const header = '# Written by citadel (playbook install-services) from its settings: change those and rerun\n# `citadel run install-services` rather than editing this file.'
  const network = ['Wants=network-online.target', 'After=network-online.target local-fs.target']

  const writable = writablePaths(s)
  const needed = [node, root, ...writable, ...(env.CITADEL_ENV_FILE ? [path.resolve(env.CITADEL_ENV_FILE)] : [])]
  const under = (tops: string[]) => needed.find((p) => tops.some((t) => inside(t, p)))
  const inHome = under(['/home', '/root', '/run/user'])
  const inTmp = under(['/tmp', '/var/tmp'])
  const root_ = runsAsRoot(s)
  const caps = ['CAP_SYS_RAWIO', 'CAP_SYS_ADMIN']
  const monitor = [
    header, '[Unit]',
    'Description=citadel storage monitor: usage, links, SMART and backups; alerts on changes, writes health.json and metrics',
    ...network, '',
    '[Service]', 'Type=exec', exec('monitor'), ...common,
    'SyslogIdentifier=citadel-monitor', 'Restart=on-failure', 'RestartSec=10s',
    '# Exit status 4 is invalid settings: restarting does not mend them.', 'RestartPreventExitStatus=4',
    ...(root_ ? [] : [`User=${verbatim(s.owner!.user, 'CITADEL_OWNER user')}`, ...(s.owner!.group ? [`Group=${verbatim(s.owner!.group, 'CITADEL_OWNER group')}`] : [])]),
    '',
    '# Sandbox: the whole file system is read-only but for the roots (and the metrics directory).',
    'NoNewPrivileges=yes', 'ProtectSystem=strict',
    `ReadWritePaths=${writable.map((d) => rwPath(d, SETTING_OF_PATH.find(([of]) => of(s) === d)?.[1] ?? 'path')).join(' ')}`,
    ...(inTmp ? [`# PrivateTmp= is off: ${inTmp} lies in /tmp or /var/tmp, which a private /tmp would hide.`] : ['PrivateTmp=yes']),
    ...(inHome ? [`# ${inHome} lies under /home, /root or /run/user: home directories are read-only rather than hidden.`, 'ProtectHome=read-only'] : ['ProtectHome=yes']),
    'ProtectKernelTunables=yes', 'ProtectKernelModules=yes', 'ProtectKernelLogs=yes', 'ProtectControlGroups=yes', 'ProtectHostname=yes',
    'RestrictSUIDSGID=yes', 'RestrictRealtime=yes', 'RestrictNamespaces=yes', 'LockPersonality=yes',
    'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK',
    'SystemCallArchitectures=native',
    '# CAP_SYS_ADMIN stays for SMART (below); without mount calls it cannot undo the read-only file system.',
    'SystemCallFilter=~@clock @cpu-emulation @debug @module @mount @obsolete @raw-io @reboot @swap', 'SystemCallErrorNumber=EPERM',
    '# SMART: smartctl opens the raw disks and sends ATA PASS-THROUGH over SG_IO, which the kernel allows only with',
    '# CAP_SYS_RAWIO, and NVMe admin commands, which need CAP_SYS_ADMIN. Hence no PrivateDevices= and no ProtectClock=',
    '# (both close the device cgroup to /dev/sd* and /dev/nvme*) and no MemoryDenyWriteExecute= (Node compiles code).',
    ...(root_
      ? ['# As root it may also set owners and modes while repairing links: CAP_CHOWN, CAP_FOWNER, CAP_DAC_OVERRIDE.', `CapabilityBoundingSet=${[...caps, 'CAP_CHOWN', 'CAP_FOWNER', 'CAP_DAC_OVERRIDE'].join(' ')}`]
      : ['# As a user, it gets the two as ambient capabilities, and the disk group to open the device nodes (root:disk 0660).', `CapabilityBoundingSet=${caps.join(' ')}`, `AmbientCapabilities=${caps.join(' ')}`, 'SupplementaryGroups=disk']),
    '', '[Install]', 'WantedBy=multi-user.target', '',
  ]

  const oneshot = (playbook: 'daily' | 'weekly', what: string) => [
    header, '[Unit]', `Description=citadel ${playbook} playbook: ${what}`, ...network, '',
    '[Service]', 'Type=oneshot', exec('run', playbook), ...common, `SyslogIdentifier=citadel-${playbook}`,
    '# As root and without a sandbox: backups keep owners, may reach a remote store over ssh, and perf runs fio.',
    '',
  ]
  const timer = (playbook: 'daily' | 'weekly', setting: string, calendar: string) => [
    header, '[Unit]', `Description=citadel ${playbook} playbook (${setting})`, '',
    '[Timer]', `OnCalendar=${verbatim(calendar.trim(), setting)}`, `RandomizedDelaySec=${s.systemd.randomDelay}`, 'Persistent=true', `Unit=citadel-${playbook}.service`, '',
    '[Install]', 'WantedBy=timers.target', '',
  ]
  return [
    { name: MONITOR_UNIT, content: monitor.join('\n') },
    { name: 'citadel-daily.service', content: oneshot('daily', 'repair and verify links, check usage, SMART and backups, incremental backup').join('\n') },
    { name: 'citadel-daily.timer', content: timer('daily', 'CITADEL_DAILY_SCHEDULE', s.systemd.dailySchedule).join('\n') },
    { name: 'citadel-weekly.service', content: oneshot('weekly', 'full backup, verify a sample, clean up, measure I/O').join('\n') },
    { name: 'citadel-weekly.timer', content: timer('weekly', 'CITADEL_WEEKLY_SCHEDULE', s.systemd.weeklySchedule).join('\n') },
  ]
}

/** The first schedule `systemd-analyze calendar` rejects (or that never elapses), as a line naming its setting; else null. */
export async function scheduleProblem($: Shell, s: Settings): Promise<string | null> {
  for (const [name, expr] of [['CITADEL_DAILY_SCHEDULE', s.systemd.dailySchedule], ['CITADEL_WEEKLY_SCHEDULE', s.systemd.weeklySchedule]] as const) {
    const out = await $({ nothrow: true })`systemd-analyze calendar -- ${expr.trim()}`
    const why = out.exitCode !== 0 ? out.stderr.trim().split('\n')[0] : /Next elapse: never/.test(out.stdout) ? 'it never elapses' : null
    if (why) return `invalid setting ${name}=${JSON.stringify(expr)}: ${why}; expected a systemd calendar expression such as *-*-* 03:00:00`
  }
  return null
}

/**
 * Whether the system manager loads units from `dir` (one of `systemd-analyze unit-paths`); true when that
 * cannot be asked. A unit written elsewhere (a staging or test directory) is never reloaded nor enabled.
 */
export async function managerReads($: Shell, dir: string): Promise<boolean> {
  const out = await $({ nothrow: true, timeout: 5000 })`systemd-analyze unit-paths`.catch(() => null)
  if (!out || out.exitCode !== 0) return true
  const real = (p: string) => {
    try {
      return realpathSync(p)
    } catch {
      return path.resolve(p)
    }
  }
  return out.stdout.split('\n').some((line) => line.trim() !== '' && real(line.trim()) === real(dir))
}

// ---- State of the units, for status and start-monitor.

export type UnitProperties = Record<string, string>

/**
 * `systemctl show` of several units: one block of Key=Value lines per unit, blocks separated by a blank line.
 * Null when systemctl fails or does not answer within 5 s.
 */
export async function showUnits($: Shell, units: string[], props: string[]): Promise<Map<string, UnitProperties> | null> {
  try {
    const property = `--property=Id,${props.join(',')}`
    // --timestamp=unix (systemd 248 and later) prints times as @seconds; older ones print their local format.
    let out = await $({ nothrow: true, timeout: 5000 })`systemctl show --timestamp=unix ${property} -- ${units}`
    if (out.exitCode !== 0) out = await $({ nothrow: true, timeout: 5000 })`systemctl show ${property} -- ${units}`
    if (out.exitCode !== 0) return null
    const result = new Map<string, UnitProperties>()
    for (const block of out.stdout.split(/\n\s*\n/)) {
      const fields: UnitProperties = {}
      for (const line of block.split('\n')) {
        const eq = line.indexOf('=')
        if (eq > 0) fields[line.slice(0, eq)] = line.slice(eq + 1)
      }
      if (fields.Id) result.set(fields.Id, fields)
    }
    return result
  } catch {
    return null
  }
}

/** A timestamp systemctl printed (@seconds with --timestamp=unix, or its usual text) as ISO, or null. */
export function timestampOf(value: string | undefined): string | null {
  if (!value || value === 'n/a' || value === '0') return null
  const unix = /^@(\d+)$/.exec(value)
  const ms = unix ? Number(unix[1]) * 1000 : Date.parse(value)
  return Number.isFinite(ms) && ms > 0 ? new Date(ms).toISOString() : null
}

export interface ServicesState {
  systemd: 'running' | 'not running'
  dir: string
  /** Unit files of citadel's present in CITADEL_SYSTEMD_DIR, and those that are not. */
  installed: string[]
  missing: string[]
  /** From systemctl, when systemd runs and the monitor unit is installed; null otherwise. */
  monitor: { load_state: string | null; unit_file_state: string | null; active_state: string | null; main_pid: number | null } | null
  timers: { unit: string; unit_file_state: string | null; active_state: string | null; next_elapse: string | null }[]
  /** Why the systemctl part is missing, when it is. */
  note: string | null
}

/** The state of citadel's units: cheap (one systemctl call, 5 s at most) and never throws. */
export async function servicesState(s: Settings, $: Shell): Promise<ServicesState> {
  const dir = s.systemd.dir
  const present = UNIT_FILES.filter((name) => {
    try {
      return lstatSync(path.join(dir, name)).isFile()
    } catch {
      return false
    }
  })
  const state: ServicesState = { systemd: systemdRunning() ? 'running' : 'not running', dir, installed: present, missing: UNIT_FILES.filter((n) => !present.includes(n)), monitor: null, timers: [], note: null }
  if (state.systemd === 'not running') state.note = 'systemd is not running'
  else if (!present.includes(MONITOR_UNIT)) state.note = 'units not installed'
  else {
    const shown = await showUnits($, ENABLED_UNITS, ['LoadState', 'UnitFileState', 'ActiveState', 'MainPID', 'NextElapseUSecRealtime'])
    const get = (unit: string, prop: string) => shown?.get(unit)?.[prop] || null
    if (!shown) state.note = 'systemctl did not answer'
    else if (get(MONITOR_UNIT, 'LoadState') !== 'loaded') state.note = `the units in ${dir} are not loaded by systemd (${get(MONITOR_UNIT, 'LoadState') ?? 'unknown'}): systemctl daemon-reload, or a CITADEL_SYSTEMD_DIR systemd does not read`
    if (shown) {
      const pid = Number(get(MONITOR_UNIT, 'MainPID'))
      state.monitor = { load_state: get(MONITOR_UNIT, 'LoadState'), unit_file_state: get(MONITOR_UNIT, 'UnitFileState'), active_state: get(MONITOR_UNIT, 'ActiveState'), main_pid: pid > 0 ? pid : null }
      state.timers = TIMER_UNITS.map((unit) => ({ unit, unit_file_state: get(unit, 'UnitFileState'), active_state: get(unit, 'ActiveState'), next_elapse: timestampOf(get(unit, 'NextElapseUSecRealtime') ?? undefined) }))
    }
  }
  return state
}
