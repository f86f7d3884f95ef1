// Settings: one table of every setting (name, default, meaning, parser), loaded from the process
// environment, then a .env file, then the defaults. Invalid input never reaches a task.
import { existsSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { parse as parseDotenv } from 'dotenv'
import { z } from 'zod'
import { isInside, projectRoot } from './fsx.ts'

export interface ModelEntry { alias: string; dir: string }

/** The variable storage-env.sh exports for a model's path. */
export const envNameOfAlias = (alias: string) => `CITADEL_MODEL_${alias.toUpperCase().replaceAll('-', '_')}`

interface SettingSpec<T> {
  default: string | undefined
  doc: string
  schema: z.ZodType<T, string>
}

const text = (expected: string) => z.string({ error: expected })

const absolutePath = text('expected an absolute path, e.g. /mnt/citadel-models')
  .refine((v) => path.isAbsolute(v) && !v.includes('\0'), 'expected an absolute path, e.g. /mnt/citadel-models')
  .transform((v) => path.resolve(v))

const BOOLEAN_WORDS: Record<string, boolean> = { true: true, '1': true, yes: true, false: false, '0': false, no: false }
const boolean = text('expected true/false, 1/0 or yes/no')
  .refine((v) => v.toLowerCase() in BOOLEAN_WORDS, 'expected true/false, 1/0 or yes/no')
  .transform((v) => BOOLEAN_WORDS[v.toLowerCase()] as boolean)

/** A whole number written in decimal digits; the unit, when given, is said in the message (of days). Settings and task arguments share it. */
export const wholeNumber = (min: number, example: string, unit?: string) => {
  const expected = `expected a whole number${unit ? ` of ${unit}` : ''}${min > 0 ? ` of at least ${min}` : ''}, e.g. ${example}`
  return text(expected).refine((v) => /^\d+$/.test(v) && Number.isSafeInteger(Number(v)) && Number(v) >= min, expected).transform(Number)
}

export const ratio = (example: string) => {
  const expected = `expected a ratio greater than 0 and at most 1, e.g. ${example}`
  return text(expected)
    .refine((v) => /^(0?\.\d+|[01](\.\d*)?)$/.test(v) && Number(v) > 0 && Number(v) <= 1, expected)
    .transform(Number)
}

const octalMode = text('expected an octal mode such as 0755')
  .refine((v) => /^0?[0-7]{3,4}$/.test(v) && parseInt(v, 8) <= 0o7777, 'expected an octal mode such as 0755')
  .transform((v) => parseInt(v, 8))

const NAME = '[a-z_][a-z0-9_.-]*\\$?|\\d+'
const owner = text('expected user:group (names or numeric ids), e.g. citadel:citadel')
  .refine((v) => new RegExp(`^(${NAME})(:(${NAME}))?$`).test(v), 'expected user:group (names or numeric ids), e.g. citadel:citadel')
  .transform((v) => { const [user, group] = v.split(':') as [string, string | undefined]; return { user, group } })

// A systemd calendar expression ends up on one line of a unit file: a newline or control character there
// would smuggle in a directive. `install-services` has systemd-analyze check the expression itself.
const calendar = text('expected a systemd calendar expression, e.g. *-*-* 03:00:00')
  .refine((v) => v.trim() !== '' && !/[\x00-\x1f\x7f]/.test(v), 'expected a systemd calendar expression on one line, e.g. *-*-* 03:00:00')

// [user@]host:/absolute/path, as rsync and ssh take it. A host starting with "-" would be read as an option.
const REMOTE_PATTERN = /^(?:([a-z_][a-z0-9_.-]*)@)?([A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]):(\/.*)$/
const remote = text('expected [user@]host:/absolute/path, e.g. backup@nas:/srv/citadel-backup')
  .refine((v) => REMOTE_PATTERN.test(v) && !/[\x00-\x1f]/.test(v), 'expected [user@]host:/absolute/path, e.g. backup@nas:/srv/citadel-backup')
  .transform((v) => {
    const [, user, host, dir] = REMOTE_PATTERN.exec(v) as RegExpExecArray
    return { user, host: (host as string).replace(/^\[|\]$/g, ''), dir: path.posix.resolve(dir as string) }
  })
  .refine((r) => r.dir !== '/', 'expected a directory below / for the remote backups, not / itself')

// ssh reads a file option as a quoted word: a double quote or a backslash in the path cannot be carried.
const sshFile = absolutePath.refine((v) => !/["\\]/.test(v), 'expected an absolute path without double quotes or backslashes (ssh cannot take them in a file option)')

const HOST_KEY_CHECKING = ['yes', 'accept-new', 'no'] as const
const hostKeyChecking = text('expected yes, accept-new or no')
  .refine((v) => (HOST_KEY_CHECKING as readonly string[]).includes(v), 'expected yes, accept-new or no')
  .transform((v) => v as (typeof HOST_KEY_CHECKING)[number])

export const ALIAS_PATTERN = /^[a-z0-9][a-z0-9_-]*$/

const modelRegistry = z.string().transform((value, ctx) => {
  const models: ModelEntry[] = []
  const pairs = value.split(',').map((p) => p.trim()).filter((p) => p !== '')
  for (const pair of pairs) {
    const eq = pair.indexOf('=')
    const alias = eq < 0 ? pair : pair.slice(0, eq).trim()
    const dir = eq < 0 ? '' : pair.slice(eq + 1).trim()
    const problem =
      eq < 0 ? `"${pair}" is not alias=directory`
      : !ALIAS_PATTERN.test(alias) ? `alias "${alias}" must match [a-z0-9][a-z0-9_-]*`
      : dir === '' || dir === '.' || dir === '..' || dir.includes('/') || dir.includes('\0')
        ? `directory "${dir}" of alias "${alias}" must be a single path component (no "/", not "." or "..", not empty)`
      : models.some((m) => envNameOfAlias(m.alias) === envNameOfAlias(alias))
        ? `alias "${alias}" repeats or clashes with another alias as ${envNameOfAlias(alias)}`
      : undefined
    if (problem) ctx.addIssue({ code: 'custom', message: `${problem}; expected alias=directory pairs separated by commas` })
    else models.push({ alias, dir })
  }
  return models
})

// A base URL the health and model endpoints are appended to: a path prefix (a reverse proxy) is kept, a
// query, fragment or password would not survive the appending or would end up in the log.
const HTTP_URL = 'expected an http:// or https:// base URL without query, fragment or credentials, e.g. http://127.0.0.1:8000'
const httpUrl = text(HTTP_URL)
  .refine((v) => {
    if (!URL.canParse(v)) return false
    const u = new URL(v)
    return (u.protocol === 'http:' || u.protocol === 'https:') && u.search === '' && u.hash === '' && u.username === '' && u.password === ''
  }, HTTP_URL)
  .transform((v) => new URL(v).href.replace(/\/+$/, ''))

const setting = <T>(def: string | undefined, doc: string, schema: z.ZodType<T, string>): SettingSpec<T> => ({ default: def, doc, schema })

/** Every setting, in the order .env.example and docs/settings.md (generated from this table) list them. */
export const SETTINGS = {
  CITADEL_APP_ROOT: setting('/opt/citadel', 'Application directory (configs, logs, state, links to the model disk)', absolutePath),
  CITADEL_MODELS_ROOT: setting('/mnt/citadel-models', 'Mount point of the fast model disk (NVMe); citadel never creates it', absolutePath),
  CITADEL_MODELS_ACTIVE: setting(undefined, 'Directory of the models vLLM serves; default <models root>/active', absolutePath),
  CITADEL_BACKUP_ROOT: setting('/mnt/citadel-backup', 'Mount point of the backup disk (HDD); citadel never creates it', absolutePath),
  CITADEL_OWNER: setting(undefined, 'Owner of created directories as user:group (names or numeric ids), applied when running as root; empty = leave as is', owner),
  CITADEL_DIR_MODE: setting('0755', 'Mode of created directories (octal)', octalMode),
  MODEL_REGISTRY: setting('mixtral=mixtral-8x7b-instruct,yi34b=yi-34b-chat', 'Models as alias=directory pairs, comma-separated: alias [a-z0-9][a-z0-9_-]*, directory a single path component inside the active models directory', modelRegistry),
  MODEL_DOWNLOAD_TIMEOUT: setting('1800', 'Seconds a model download may take', wholeNumber(1, '1800')),
  MODEL_VERIFICATION_ENABLED: setting('true', 'Verify model files after download', boolean),
  MODEL_AUTO_BACKUP: setting('true', 'Back up a model once it is in place', boolean),
  MODEL_ARCHIVE_KEEP: setting('2', 'Archived versions of each alias to keep for rollback; model list and model archive offer the removal of older ones (never done by themselves)', wholeNumber(1, '2')),
  VLLM_RESTART_COMMAND: setting(undefined, 'Shell command (run with bash) that restarts vLLM after model promote and model rollback, e.g. systemctl restart vllm; a failure rolls the alias back; empty = no server step', text('expected a shell command').refine((v) => v.trim() !== '' && !v.includes('\0'), 'expected a shell command (not blank, without NUL bytes), e.g. systemctl restart vllm')),
  VLLM_URL: setting(undefined, 'Base URL of the vLLM server, e.g. http://127.0.0.1:8000: after the restart GET /health must answer 200 and GET /v1/models list the new version; needs VLLM_RESTART_COMMAND; empty = no check', httpUrl),
  VLLM_API_KEY: setting(undefined, "vLLM's --api-key (vLLM reads the same variable), sent as a bearer token to GET /v1/models after a restart; never printed; empty = none", text('expected a token').refine((v) => /^[\x21-\x7e]+$/.test(v), 'expected a token of printable characters without spaces, as given to vLLM --api-key')),
  VLLM_READY_TIMEOUT: setting('300', 'Seconds vLLM may take after its restart to answer GET /health with 200 (also the limit on the restart command itself)', wholeNumber(1, '300')),
  SYMLINK_FORCE_RECREATE: setting('false', 'Replace a real directory or file in the way of a link (moved aside, never deleted); same as --force', boolean),
  STORAGE_MONITOR_DISK_USAGE_WARNING: setting('0.8', 'Disk usage ratio that raises a warning; above 0, at most 1, below the critical one', ratio('0.8')),
  STORAGE_MONITOR_DISK_USAGE_CRITICAL: setting('0.9', 'Disk usage ratio that is critical', ratio('0.9')),
  STORAGE_MONITOR_INODE_USAGE_WARNING: setting('0.8', 'Inode usage ratio that raises a warning; above 0, at most 1, below the critical one', ratio('0.8')),
  STORAGE_MONITOR_INODE_USAGE_CRITICAL: setting('0.9', 'Inode usage ratio that is critical', ratio('0.9')),
  STORAGE_MONITOR_CHECK_INTERVAL: setting('60', 'Seconds between two monitor cycles (usage, links, backups)', wholeNumber(1, '60')),
  STORAGE_MONITOR_CONSECUTIVE: setting('2', 'Samples in a row a new state must hold before the monitor alerts on it', wholeNumber(1, '2')),
  STORAGE_MONITOR_SMART_INTERVAL: setting('1800', 'Seconds between two SMART reads in the monitor (smartctl never wakes a sleeping disk)', wholeNumber(1, '1800')),
  STORAGE_MONITOR_REMOTE_INTERVAL: setting('3600', 'Seconds between two readings of the remote backup store (BACKUP_REMOTE) in the monitor: each is an ssh round trip', wholeNumber(1, '3600')),
  STORAGE_MONITOR_ARCHIVE_WARNING: setting('0.3', 'Share of the model disk that archive/ and staging/ may use together before health-check warns (model remove frees the oldest archived versions)', ratio('0.3')),
  STORAGE_MONITOR_ALERT_COMMAND: setting(undefined, 'Shell command run for each alert, with the alert as JSON on its stdin; empty = log and stderr only', text('expected a shell command').refine((v) => !v.includes('\0'), 'expected a shell command without NUL bytes')),
  STORAGE_MONITOR_PROMETHEUS_FILE: setting(undefined, 'Prometheus textfile the monitor rewrites every cycle; default <app root>/metrics/citadel.prom', absolutePath),
  BACKUP_RETENTION_DAYS: setting('30', 'Backups older than this many days may be removed by cleanup (backup cleanup DAYS overrides it)', wholeNumber(0, '30', 'days')),
  BACKUP_VERIFY_SAMPLE_RATE: setting('0.1', 'Share of backup bytes (and files) whose hashes each verify run checks; backup verify --sample overrides it', ratio('0.1')),
  BACKUP_KEEP_MIN: setting('3', 'Complete backups of each source cleanup always keeps, whatever their age (an empty backup does not count)', wholeNumber(1, '3')),
  BACKUP_MAX_SHRINK: setting('0.5', 'Share by which the file count or bytes of a source may fall since its previous backup before backup create refuses (an unmounted disk looks like an emptied one); --force makes it anyway', ratio('0.5')),
  BACKUP_DRILL_MAX_AGE_DAYS: setting('35', 'Days the backups of the active models may go without a successful restore drill (backup restore --drill, run by the weekly playbook) before health-check warns; 0 = no warning', wholeNumber(0, '35', 'days')),
  BACKUP_STORE_LOCK_WAIT: setting('1800', 'Seconds backup create and cleanup wait for another app root\'s run to finish with a shared backup store before they fail', wholeNumber(0, '1800')),
  BACKUP_REMOTE: setting(undefined, 'Off-host backup store as [user@]host:/absolute/path, reached with rsync over ssh; empty = none', remote),
  BACKUP_SSH_PORT: setting('22', 'ssh port of the remote backup host', wholeNumber(1, '22').refine((n) => n <= 65535, 'expected a port from 1 to 65535')),
  BACKUP_SSH_IDENTITY: setting(undefined, 'Private key ssh uses for the remote backup host; empty = ssh\'s own defaults', sshFile),
  BACKUP_SSH_STRICT_HOST_KEY_CHECKING: setting('accept-new', 'ssh StrictHostKeyChecking for the remote backup host: yes, accept-new or no', hostKeyChecking),
  BACKUP_SSH_KNOWN_HOSTS: setting(undefined, 'known_hosts file for the remote backup host; empty = ssh\'s own (~/.ssh/known_hosts)', sshFile),
  BACKUP_REMOTE_MAX_AGE_DAYS: setting('8', 'Days the newest backup in the remote store (BACKUP_REMOTE) may reach before health-check warns that backups stopped going off the host', wholeNumber(1, '8', 'days')),
  BACKUP_REMOTE_BANDWIDTH_LIMIT: setting('0', 'KiB per second rsync may send to the remote backup host (--bwlimit), so a send does not fill the uplink; 0 = no limit', wholeNumber(0, '20000')),
  CITADEL_SYSTEMD_DIR: setting('/etc/systemd/system', 'Directory write-units (playbook install-services) writes the systemd units into', absolutePath),
  CITADEL_DAILY_SCHEDULE: setting('*-*-* 03:00:00', 'When the daily playbook runs (systemd OnCalendar)', calendar),
  CITADEL_WEEKLY_SCHEDULE: setting('Sun *-*-* 04:00:00', 'When the weekly playbook runs (systemd OnCalendar)', calendar),
  CITADEL_TIMER_RANDOM_DELAY: setting('1800', 'Seconds the timers may start late at random (RandomizedDelaySec), so a fleet does not hit its NAS at once', wholeNumber(0, '1800')),
} as const

type SettingName = keyof typeof SETTINGS
type Raw = { [K in SettingName]: z.output<(typeof SETTINGS)[K]['schema']> }

/** Settings whose value a message never repeats: it would land in logs and monitoring. */
const SECRETS: ReadonlySet<string> = new Set<SettingName>(['VLLM_API_KEY'])

export interface Settings {
  appRoot: string
  modelsRoot: string
  modelsActive: string
  backupRoot: string
  owner?: { user: string; group?: string }
  dirMode: number
  models: ModelEntry[]
  modelDownloadTimeout: number
  modelVerificationEnabled: boolean
  modelAutoBackup: boolean
  modelArchiveKeep: number
  /** The server step of model promote and rollback; off without restartCommand. */
  vllm: { restartCommand?: string; url?: string; apiKey?: string; readyTimeout: number }
  symlinkForceRecreate: boolean
  monitor: {
    diskWarning: number
    diskCritical: number
    inodeWarning: number
    inodeCritical: number
    checkInterval: number
    consecutive: number
    smartInterval: number
    /** Seconds between two ssh readings of the remote store. */
    remoteInterval: number
    /** Share of the model disk archive/ and staging/ may use before health-check warns. */
    archiveWarning: number
    alertCommand?: string
    prometheusFile: string
  }
  backup: {
    retentionDays: number
    verifySampleRate: number
    keepMin: number
    maxShrink: number
    /** Days without a successful drill before health-check warns; 0 = never. */
    drillMaxAgeDays: number
    storeLockWait: number
    /** How ssh reaches a host: the off-host store's, and model fetch's from [user@]host:/path. */
    ssh: SshSettings
    remote?: RemoteSettings
    /** Days the newest backup in the remote store may reach before health-check warns. */
    remoteMaxAgeDays: number
  }
  systemd: { dir: string; dailySchedule: string; weeklySchedule: string; randomDelay: number }
  /** Where each setting came from, for messages: env, the .env file's path, or default. */
  sources: Record<string, string>
  /** Names that look like settings and are none (misspellings), each with where it was and the closest setting. */
  warnings: string[]
}

export interface SshSettings {
  port: number
  identity?: string
  strictHostKeyChecking: 'yes' | 'accept-new' | 'no'
  knownHosts?: string
}

export interface RemoteSettings extends SshSettings {
  user?: string
  host: string
  /** Directory on the remote host that holds the backups (the remote's backups/ lives inside it). */
  dir: string
  /** KiB/s for rsync's --bwlimit; 0 = none. */
  bandwidthLimit: number
}

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join('\n'))
  }
}


// dotenv's own line pattern: the same names it reads, found again with where they stand, which its parse drops.
const DOTENV_LINE = /(?:^|^)\s*(?:export\s+)?([\w.-]+)(?:\s*=\s*?|:\s+?)(\s*'(?:\\'|[^'])*'|\s*"(?:\\"|[^"])*"|\s*`(?:\\`|[^`])*`|[^#\r\n]+)?\s*(?:#.*)?(?:$|$)/gm

interface EnvFile { file: string; values: Record<string, string>; lines: Map<string, number> }

/** The env file settings are read from: CITADEL_ENV_FILE, or .env in the checkout. It may not exist. */
export const envFilePath = (env: NodeJS.ProcessEnv = process.env) => (env.CITADEL_ENV_FILE ? path.resolve(env.CITADEL_ENV_FILE) : path.join(projectRoot(), '.env'))

/** dotenv's own line pattern, for code that edits one line of the env file and must find it as dotenv does. */
export const dotenvLines = () => new RegExp(DOTENV_LINE.source, DOTENV_LINE.flags)

function readEnvFile(env: NodeJS.ProcessEnv): EnvFile {
  const named = env.CITADEL_ENV_FILE
  const file = envFilePath(env)
  if (!existsSync(file)) {
    if (named) throw new ConfigError([`invalid setting CITADEL_ENV_FILE=${JSON.stringify(named)}: file does not exist; expected the path of a readable .env file`])
    return { file, values: {}, lines: new Map() }
  }
  const content = readFileSync(file)
  const text = content.toString().replace(/\r\n?/g, '\n')
  const lines = new Map<string, number>()
  for (const m of text.matchAll(DOTENV_LINE)) {
    const key = m.index + (/^\s*(?:export\s+)?/.exec(m[0]) as RegExpExecArray)[0].length
    lines.set(m[1]!, text.slice(0, key).split('\n').length)
  }
  return { file, values: parseDotenv(content), lines }
}

/** Names citadel itself sets or reads besides the settings: never a misspelling. */
const INTERNAL_NAMES = new Set(['CITADEL_ENV_FILE', 'CITADEL_DEMO_DIR'])
/** The beginnings of the settings' names: a name with one of them that is no setting is likely misspelled. */
const PREFIXES = [...new Set(Object.keys(SETTINGS).map((n) => n.slice(0, n.indexOf('_') + 1)))]
  // vLLM reads dozens of VLLM_* variables of its own, which are often set where citadel runs.
  .filter((p) => p !== 'VLLM_')

function editDistance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const next = [i]
    for (let j = 1; j <= b.length; j++) next[j] = Math.min(row[j]! + 1, next[j - 1]! + 1, row[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1))
    row = next
  }
  return row[b.length]!
}

/**
 * A warning for each name in the env file or the environment that starts like a setting but is none. The
 * CITADEL_MODEL_<ALIAS> variables storage-env.sh exports for the registered models are citadel's own.
 */
function misspellings(envFile: EnvFile, env: NodeJS.ProcessEnv, models: ModelEntry[]): string[] {
  const known = new Set<string>([...Object.keys(SETTINGS), ...INTERNAL_NAMES, ...models.map((m) => envNameOfAlias(m.alias))])
  const suspect = (name: string) => PREFIXES.some((p) => name.startsWith(p)) && !known.has(name)
  const closest = (name: string) => Object.keys(SETTINGS).reduce((best, n) => (editDistance(name, n) < editDistance(name, best) ? n : best))
  const found: [string, string][] = [
    ...[...envFile.lines].filter(([name]) => suspect(name)).map(([name, line]): [string, string] => [name, `line ${line} of ${envFile.file}`]),
    ...Object.keys(env).filter(suspect).sort().map((name): [string, string] => [name, 'the environment']),
  ]
  return found.map(([name, where]) => `${name} (${where}) is not a citadel setting and is ignored; did you mean ${closest(name)}?`)
}

/** Loads and validates every setting; throws ConfigError naming each bad one. Touches nothing on disk. */
export function loadSettings(env: NodeJS.ProcessEnv = process.env): Settings {
  const envFile = readEnvFile(env)
  const raw: Record<string, unknown> = {}
  const sources: Record<string, string> = {}
  const problems: string[] = []
  for (const [name, spec] of Object.entries(SETTINGS) as [SettingName, SettingSpec<unknown>][]) {
    const fromEnv = env[name]
    const fromFile = envFile.values[name]
    const [value, source] =
      fromEnv !== undefined ? [fromEnv, 'environment']
      : fromFile !== undefined ? [fromFile, envFile.file]
      : [spec.default, 'default']
    sources[name] = source
    if (value === undefined || (value === '' && spec.default === undefined)) continue
    const parsed = spec.schema.safeParse(value)
    if (parsed.success) raw[name] = parsed.data
    else for (const issue of parsed.error.issues) problems.push(`invalid setting ${name}=${SECRETS.has(name) ? '(not shown)' : JSON.stringify(value)}${source === 'default' ? '' : ` (from ${source})`}: ${issue.message}`)
  }
  const r = raw as Raw
  const order = (warning: SettingName, critical: SettingName) => {
    if (typeof raw[warning] === 'number' && typeof raw[critical] === 'number' && (raw[warning] as number) >= (raw[critical] as number))
      problems.push(`invalid setting ${warning}=${JSON.stringify(String(raw[warning]))}: expected less than ${critical} (${String(raw[critical])})`)
  }
  order('STORAGE_MONITOR_DISK_USAGE_WARNING', 'STORAGE_MONITOR_DISK_USAGE_CRITICAL')
  order('STORAGE_MONITOR_INODE_USAGE_WARNING', 'STORAGE_MONITOR_INODE_USAGE_CRITICAL')
  // Without a restart vLLM keeps the weights it loaded, and /v1/models names the path it was started with,
  // which is the same link before and after a flip: a check alone would pass while the old version serves.
  if (typeof raw.VLLM_URL === 'string' && typeof raw.VLLM_RESTART_COMMAND !== 'string' && !problems.some((p) => p.startsWith('invalid setting VLLM_RESTART_COMMAND=')))
    problems.push(`invalid setting VLLM_URL=${JSON.stringify(raw.VLLM_URL)}: expected VLLM_RESTART_COMMAND as well (the check after a restart); without a restart vLLM keeps serving the version it loaded`)
  // The three roots hold different things on different disks; one inside another would, say, back the
  // backups up or link the app into itself. The message names the root that was set, not defaulted.
  const roots = (['CITADEL_APP_ROOT', 'CITADEL_MODELS_ROOT', 'CITADEL_BACKUP_ROOT'] as const).filter((n) => typeof raw[n] === 'string')
  const inside = (inner: SettingName, outer: SettingName) => isInside(raw[outer] as string, raw[inner] as string)
  roots.forEach((x, i) =>
    roots.slice(i + 1).forEach((y) => {
      const same = raw[x] === raw[y]
      const [culprit, other] = same ? (sources[y] === 'default' ? [x, y] : [y, x]) : inside(x, y) ? [x, y] : inside(y, x) ? [y, x] : []
      if (culprit && other)
        problems.push(`invalid setting ${culprit}=${JSON.stringify(raw[culprit])}: expected a directory apart from ${other} (${raw[other] as string}), not ${same ? 'the same' : 'inside it'}`)
    }))
  if (problems.length) throw new ConfigError(problems)
  const ssh: SshSettings = {
    port: r.BACKUP_SSH_PORT,
    identity: r.BACKUP_SSH_IDENTITY,
    strictHostKeyChecking: r.BACKUP_SSH_STRICT_HOST_KEY_CHECKING,
    knownHosts: r.BACKUP_SSH_KNOWN_HOSTS,
  }
  return {
    appRoot: r.CITADEL_APP_ROOT,
    modelsRoot: r.CITADEL_MODELS_ROOT,
    modelsActive: r.CITADEL_MODELS_ACTIVE ?? path.join(r.CITADEL_MODELS_ROOT, 'active'),
    backupRoot: r.CITADEL_BACKUP_ROOT,
    owner: r.CITADEL_OWNER,
    dirMode: r.CITADEL_DIR_MODE,
    models: r.MODEL_REGISTRY,
    modelDownloadTimeout: r.MODEL_DOWNLOAD_TIMEOUT,
    modelVerificationEnabled: r.MODEL_VERIFICATION_ENABLED,
    modelAutoBackup: r.MODEL_AUTO_BACKUP,
    modelArchiveKeep: r.MODEL_ARCHIVE_KEEP,
    vllm: { restartCommand: r.VLLM_RESTART_COMMAND, url: r.VLLM_URL, apiKey: r.VLLM_API_KEY, readyTimeout: r.VLLM_READY_TIMEOUT },
    symlinkForceRecreate: r.SYMLINK_FORCE_RECREATE,
    monitor: {
      diskWarning: r.STORAGE_MONITOR_DISK_USAGE_WARNING,
      diskCritical: r.STORAGE_MONITOR_DISK_USAGE_CRITICAL,
      inodeWarning: r.STORAGE_MONITOR_INODE_USAGE_WARNING,
      inodeCritical: r.STORAGE_MONITOR_INODE_USAGE_CRITICAL,
      checkInterval: r.STORAGE_MONITOR_CHECK_INTERVAL,
      consecutive: r.STORAGE_MONITOR_CONSECUTIVE,
      smartInterval: r.STORAGE_MONITOR_SMART_INTERVAL,
      remoteInterval: r.STORAGE_MONITOR_REMOTE_INTERVAL,
      archiveWarning: r.STORAGE_MONITOR_ARCHIVE_WARNING,
      alertCommand: r.STORAGE_MONITOR_ALERT_COMMAND,
      prometheusFile: r.STORAGE_MONITOR_PROMETHEUS_FILE ?? path.join(r.CITADEL_APP_ROOT, 'metrics', 'citadel.prom'),
    },
    backup: {
      retentionDays: r.BACKUP_RETENTION_DAYS,
      verifySampleRate: r.BACKUP_VERIFY_SAMPLE_RATE,
      keepMin: r.BACKUP_KEEP_MIN,
      maxShrink: r.BACKUP_MAX_SHRINK,
      drillMaxAgeDays: r.BACKUP_DRILL_MAX_AGE_DAYS,
      storeLockWait: r.BACKUP_STORE_LOCK_WAIT,
      remoteMaxAgeDays: r.BACKUP_REMOTE_MAX_AGE_DAYS,
      ssh,
      remote: r.BACKUP_REMOTE && {
        ...r.BACKUP_REMOTE,
        ...ssh,
        bandwidthLimit: r.BACKUP_REMOTE_BANDWIDTH_LIMIT,
      },
    },
    systemd: {
      dir: r.CITADEL_SYSTEMD_DIR,
      dailySchedule: r.CITADEL_DAILY_SCHEDULE,
      weeklySchedule: r.CITADEL_WEEKLY_SCHEDULE,
      randomDelay: r.CITADEL_TIMER_RANDOM_DELAY,
    },
    sources,
    warnings: misspellings(envFile, env, r.MODEL_REGISTRY),
  }
}
