// The `citadel` command line: parses arguments, loads settings, and hands a list of tasks to the runner.
// Heavy modules (settings validation, the runner, zx, listr2) load only for commands that need them,
// so `citadel list` and `--help` answer quickly.
import { parseArgs, type ParseArgsConfig } from 'node:util'
import { playbooks } from '../../playbooks/index.ts'
import { tasks } from '../../tasks/index.ts'
import { EXIT, PLUGIN_EXIT } from '../core/exit.ts'
import type { Settings } from '../infra/config.ts'
import { argFields, parseTaskArgs, type RawArgs } from '../core/args.ts'
import { isInternalError, playbookEntries, stepOf, type Playbook, type Step, type Task, type TaskArgs } from '../core/task.ts'


class UsageError extends Error {}

const RUN_OPTIONS = {
  check: { type: 'boolean' },
  diff: { type: 'boolean' },
  json: { type: 'boolean' },
  force: { type: 'boolean' },
  tags: { type: 'string' },
  'skip-tags': { type: 'string' },
  'start-at-task': { type: 'string' },
  'list-tasks': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsConfig['options']

const COMMON_HELP = `Options:
  --check              report what would change, change nothing
  --diff               show before/after of every change
  --json               print one JSON document on stdout and nothing else there
  --force              let tasks replace what is in their way (moved aside, never deleted)
  --tags a,b           run only tasks with one of these tags
  --skip-tags a,b      leave out tasks with one of these tags
  --start-at-task NAME start at this task, skipping those before it
  --list-tasks         list the tasks that would run, run nothing
  -h, --help           this help

Settings come from the environment, then .env (or the file named by CITADEL_ENV_FILE), then defaults.
Exit: 0 ok (changes included), 1 a bug in citadel (the run log holds the stack), 2 a task failed,
3 another run holds the lock, 4 invalid settings or arguments, 99 interrupted.`

const HELP: Record<string, string> = {
  main: `citadel: keeps the model storage of a vLLM server healthy.

Usage:
  citadel run PLAYBOOK [options]   run a playbook (an ordered list of tasks)
  citadel task TASK [options]      run one task
  citadel backup create [SRC] [--type full|incremental]
  citadel backup verify [BACKUP] [--sample RATE] [--seed N] [--repair]
  citadel backup cleanup [DAYS]
  citadel backup status            the backup tasks, by their own names (see citadel help backup)
  citadel backup restore [BACKUP] [--model ALIAS ...] [--path REL ...] [--to DIR] [--drill]
                                   verified restore; the replaced directory goes to archive/
  citadel backup ACTION --remote   the same on BACKUP_REMOTE, over ssh
  citadel model verify [ALIAS|DIR ...] [--sample RATE]
                                   offline check of model directories: headers, shard index, JSON, hashes
  citadel model list               every model directory: alias, size, verification, backup, users
  citadel model archive DIR        move a directory no alias uses from active/ into archive/
  citadel model remove DIR [--force]
                                   delete from archive/ or staging/ what a verified backup holds
  citadel health-check [--json]    every check in one report; exit 0 ok, 1 warning, 2 critical, 3 unknown
  citadel status [--json]          the morning glance: usage, links, backup, SMART, monitor, timers
  citadel monitor [--interval S] [--once]
                                   check in a loop, alert on changes, write health.json and metrics
  citadel start-monitor            start citadel-monitor.service, or say how to run the monitor by hand
  citadel smart [DEVICE ...] [--json-input FILE]
                                   SMART verdict of the disks under the model and backup roots
  citadel perf [PATH] [--quick]    fio: sequential read/write and 4 KiB random read in PATH
  citadel list [--json]            playbooks with their tasks, and every task
  citadel check                    after editing a task or playbook: does it build, load and type-check
  citadel help COMMAND             help on a command

Every task also runs on its own: npx tsx tasks/TASK.ts [options]

${COMMON_HELP}`,
  run: `Usage: citadel run PLAYBOOK [options]

Runs the playbook's tasks in order. How a failure is handled is the playbook's (citadel list shows it):
  rollback  (initial-setup, install-services) the first failure stops the run and every change of the
            run is undone
  continue  (daily, weekly, emergency) the failed task's own changes are undone, finished tasks keep
            theirs, the steps that need the failed one are skipped saying so, every other step runs
A SIGINT or SIGTERM stops after the current step: under rollback the run is undone, under continue only
the step that was running.

${COMMON_HELP}`,
  task: `Usage: citadel task TASK [options]\n\nRuns one task, with the same lock and log as a playbook: it keeps its changes when it succeeds and\nundoes them when it fails.\n\n${COMMON_HELP}`,
  list: `Usage: citadel list [--json]\n\nLists the playbooks with their tasks, and every task with its description and tags.`,
  'health-check': `Usage: citadel health-check [--json]

Runs every check (disk and inode usage, links, SMART, backups; perf from its last stored result) and
prints the problems, or with --json the whole report. Changes nothing, takes no lock.
Exit: 0 ok, 1 warning, 2 critical, 3 unknown (the checks could not run, or invalid settings), as
monitoring plugins do: it drops into Nagios, Icinga or monit's \`check program\` as it is.`,
  status: `Usage: citadel status [--json]

The morning glance: usage per filesystem, link verdicts, the newest backup and its age, SMART verdicts
(from the running monitor when it read them recently), whether a monitor is running, and the systemd units:
whether citadel-monitor.service is active and when the daily and weekly timers fire next. Changes nothing.`,
  monitor: `Usage: citadel monitor [--interval SECONDS] [--once]

Checks usage, links and backups every interval (default STORAGE_MONITOR_CHECK_INTERVAL) and SMART every
STORAGE_MONITOR_SMART_INTERVAL. Alerts when a condition changes (ok -> warning -> critical, and back to ok)
and has held for STORAGE_MONITOR_CONSECUTIVE samples; a usage alert clears 5 points below its threshold.
Alerts go to the log, to stderr and to STORAGE_MONITOR_ALERT_COMMAND (the alert as JSON on its stdin).
A missing, wrong or broken link is repaired once (never with force). Every cycle rewrites
<app root>/state/health.json and STORAGE_MONITOR_PROMETHEUS_FILE. SIGINT/SIGTERM end it after the cycle.

  --interval SECONDS   seconds between cycles
  --once               one cycle; exit as health-check does (0 ok, 1 warning, 2 critical, 3 unknown)`,
  check: `Usage: citadel check

The one command to run after editing a task or playbook. Judges the sources on disk: they build (esbuild),
every task and playbook loads and is registered in its index under its file's name, and they type-check
(tsc, when the dev dependencies are installed; otherwise it says types were not checked). Each problem is
one line with file and line. Changes nothing.
Exit: 0 all good, 2 problems found.`,
  'start-monitor': `Usage: citadel start-monitor

Starts the monitor as the systemd service citadel-monitor.service (systemctl start), when systemd runs this
machine and \`citadel run install-services\` has installed the unit in CITADEL_SYSTEMD_DIR. Otherwise it
starts nothing and says how to run \`citadel monitor\` in the foreground.
Exit: 0 started, or a monitor already runs; 2 systemctl start failed (see journalctl -u citadel-monitor);
3 a monitor outside systemd holds the monitor lock (stop it first); 4 invalid settings or arguments;
5 nothing started: systemd is not running or the unit is not installed (the message says what to run).`,
  backup: `Usage: citadel backup create|verify|cleanup|status|restore [--remote] [arguments] [options]

Each is the task backup-NAME (citadel help backup-create, say): the same lock, log and report as a playbook.
Backups live in <backup root>/models/backup_<UTC date>_<time>_<full|incremental>/; latest points at the newest.
verify --repair heals each bad file it finds from a copy that hashes as the manifest says (the active
models, another backup's separate copy, BACKUP_REMOTE), in every backup that shares its inode.

With --remote each works on BACKUP_REMOTE ([user@]host:/path) over ssh instead (also the task
remote-backup-NAME): create sends a local backup (latest, or BACKUP) there, hard-linked to the newest
remote one; verify has the remote host's sha256sum -c hash a sample; verify, status and cleanup follow
the same rules on both stores; restore takes the backup from there, with the same verification.

restore builds each model directory in <models root>/staging/.restore-<time>.partial, hard-links the files
of the active tree that already hash as the backup's manifest says, copies the rest, hashes every copied
byte, and only then renames it into place; what it replaces goes to <models root>/archive/. --check first
says what it would copy and whether it fits.`,
  model: `Usage: citadel model verify [arguments] [options]

Each is the task model-NAME (citadel help model-verify, say): the same lock, log and report as a playbook.
A model is named by its alias in MODEL_REGISTRY (its directory in active/) or by a directory name in
<models root>/active, staging, archive or downloads; without one, every alias's active directory.

verify checks offline, reading only header bytes for structure: every *.safetensors and *.gguf header
against its file's size (a download cut short is caught without hashing), every shard and tensor a
*.safetensors.index.json names, the config and tokenizer JSON files; then the sha256 of every file (or
--sample RATE of them, never hashed and longest ago first) against the hash recorded in
<app root>/state/model-hashes/DIR.json the first time it verified, a Hugging Face blob's name and a
SHA256SUMS in the directory.

list shows every directory of active/, staging/, archive/ and downloads/ (unfinished downloads marked):
its alias, size, last verification, the newest backup that holds the same files, and the processes that
have files of it open or mapped. archive DIR renames a directory no alias uses into archive/. remove DIR
deletes one of archive/ or staging/ that no alias uses and no process holds, once its files hash as a
backup with a passing verification lists them (--force: without that backup); it reports the bytes
freed. archive/ keeps MODEL_ARCHIVE_KEEP versions of each alias: list and archive name the removals that
would free the rest, and nothing removes them unasked.`,
}

const csv = (v: string | boolean | undefined) => (typeof v === 'string' ? v.split(',').map((s) => s.trim()).filter(Boolean) : [])

type Values = Record<string, string | boolean | undefined>

function parse(args: string[], options: ParseArgsConfig['options']): { values: Values; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({ args, options, allowPositionals: true, strict: true })
    return { values: values as Values, positionals }
  } catch (err) {
    throw new UsageError((err as Error).message.split('\n')[0]!.replace(/\. To specify a positional.*$/, ''))
  }
}

/** The task named `name`, or the one `name` is an alias of, as the step that runs it under that name. */
function findStep(name: string): Omit<Step, 'when' | 'needs'> {
  const task = tasks.find((t) => t.name === name) ?? tasks.find((t) => t.aliases?.[name])
  if (!task) throw new UsageError(`unknown task "${name}"; expected one of: ${tasks.map((t) => t.name).join(', ')}`)
  return stepOf(task, name)
}

function findPlaybook(name: string): Playbook {
  const playbook = playbooks.find((p) => p.name === name)
  if (!playbook) throw new UsageError(`unknown playbook "${name}"; expected one of: ${playbooks.map((p) => p.name).join(', ')}`)
  return playbook
}

/** Tasks an operator types often, with a command of their own. */
const SHORT_NAMES: Record<string, string> = { 'check-smart': 'smart', 'check-perf': 'perf' }

function usageOf(task: Task, prefix = `citadel task ${task.name}`): string {
  const words = argFields(task.args).map((a) => `[${a.label}${a.list ? ' ...' : ''}]`)
  return [prefix, ...words, '[options]'].join(' ')
}

function taskHelp(task: Task): string {
  const fields = argFields(task.args)
  // As wide as the options' column below, wider only when a label needs it.
  const width = Math.max(21, ...fields.map((a) => a.label.length + 2))
  const args = fields.map((a) => `  ${a.label.padEnd(width)}${a.help}`)
  const backupAction = /^backup-(.+)$/.exec(task.name)
  const modelAction = /^model-(.+)$/.exec(task.name)
  const short = backupAction ? `backup ${backupAction[1]}` : modelAction ? `model ${modelAction[1]}` : SHORT_NAMES[task.name]
  const aliases = Object.entries(task.aliases ?? {}).map(([alias, preset]) => `${usageOf(task, `citadel task ${alias}`)}: the task with ${Object.keys(preset).join(', ')} set${backupAction ? ` (citadel ${short} --remote)` : ''}`)
  const also = [...(short ? [usageOf(task, `citadel ${short}`)] : []), ...aliases]
  return `Usage: ${usageOf(task)}${also.map((line) => `\nAlso: ${line}`).join('')}\n\n${task.description}\nTags: ${task.tags.join(', ')}\n${args.length ? `\nArguments:\n${args.join('\n')}\n` : ''}\n${COMMON_HELP}`
}

/** The task's own arguments out of its command line, as given: its schema judges them. */
function commandLineArgs(task: Task, values: Values, positionals: string[]): RawArgs {
  const fields = argFields(task.args)
  const slots = fields.filter((a) => a.positional)
  if (positionals.length > slots.length && !slots.at(-1)?.list) {
    const expected = slots.length ? `at most ${slots.map((a) => a.label).join(' ')}` : 'no arguments'
    throw new UsageError(`task ${task.name} takes ${expected}, got "${positionals[slots.length]}" too`)
  }
  const raw: Record<string, string | boolean | readonly string[]> = {}
  for (const field of fields) {
    const at = slots.indexOf(field)
    const value = !field.positional ? values[field.name] : field.list ? positionals.slice(at) : positionals[at]
    if (value !== undefined && !(Array.isArray(value) && value.length === 0)) raw[field.name] = value
  }
  return raw
}

/** A step whose arguments its task's schema has converted and defaulted. */
type ReadyStep = Omit<Step, 'args'> & { args: TaskArgs }

/** The step with its arguments through its task's schema; `where` says whose they are when they are wrong. */
function ready(step: Step, where = ''): ReadyStep {
  const parsed = parseTaskArgs(step.task.args, step.args)
  if ('problem' in parsed) throw new UsageError(`${where}${parsed.problem}`)
  return { ...step, args: parsed.args }
}

function select(entries: ReadyStep[], values: Values): ReadyStep[] {
  const only = csv(values.tags)
  const skip = csv(values['skip-tags'])
  let chosen = entries
  const start = values['start-at-task']
  if (typeof start === 'string') {
    const index = chosen.findIndex((e) => e.name === start)
    if (index < 0) throw new UsageError(`--start-at-task: "${start}" is not a task of this run; expected one of: ${chosen.map((e) => e.name).join(', ')}`)
    chosen = chosen.slice(index)
  }
  return chosen
    .filter((e) => (only.length === 0 || e.tags.some((t) => only.includes(t)) || only.includes(e.name)) && !e.tags.some((t) => skip.includes(t)))
}

function list(json: boolean): void {
  if (json) {
    const doc = {
      playbooks: playbooks.map((p) => ({ name: p.name, description: p.description, on_failure: p.onFailure, tasks: playbookEntries(p).map((e) => e.name) })),
      tasks: tasks.map((t) => ({ name: t.name, description: t.description, tags: t.tags })),
    }
    process.stdout.write(JSON.stringify(doc, null, 2) + '\n')
    return
  }
  const width = Math.max(...tasks.map((t) => t.name.length), ...playbooks.map((p) => p.name.length)) + 2
  const out = ['PLAYBOOKS (citadel run NAME)']
  for (const p of playbooks) {
    out.push(`  ${p.name.padEnd(width)}${p.description}`, `  ${''.padEnd(width)}${playbookEntries(p).map((e) => e.name).join(' -> ')}`)
    out.push(`  ${''.padEnd(width)}on failure: ${p.onFailure === 'rollback' ? 'roll the whole run back' : "undo the failed step only, run the steps that do not need it"}`)
  }
  out.push('', 'TASKS (citadel task NAME)')
  for (const t of tasks) out.push(`  ${t.name.padEnd(width)}${t.description} [${t.tags.join(', ')}]`)
  process.stdout.write(out.join('\n') + '\n')
}

/** The settings, or null after printing one line per invalid setting; `warnings` once per run. */
async function settingsOrNull({ warnings = true } = {}): Promise<Settings | null> {
  const { loadSettings, ConfigError } = await import('../infra/config.ts')
  try {
    const settings = loadSettings()
    if (warnings) for (const warning of settings.warnings) process.stderr.write(`citadel: warning: ${warning}\n`)
    return settings
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err
    for (const problem of err.problems) process.stderr.write(`citadel: ${problem}\n`)
    return null
  }
}

async function runTasks(playbook: Playbook | null, chosen: ReadyStep[], values: Values): Promise<number> {
  if (values['list-tasks']) {
    process.stdout.write(chosen.map(({ task, name }) => `${name}  ${task.description}`).join('\n') + '\n')
    return 0
  }
  const settings = await settingsOrNull()
  if (!settings) return EXIT.invalid
  const { run, systemHint } = await import('../core/runner.ts')
  const { LockHeldError, LockUnreadableError } = await import('../core/lock.ts')
  try {
    return await run({
      playbook: playbook?.name ?? null,
      onFailure: playbook?.onFailure ?? 'continue',
      tasks: chosen.map(({ task, name, args, when, needs }) => ({ task, name, args, when, needs })),
      settings,
      reloadSettings: () => settingsOrNull({ warnings: false }),
      check: Boolean(values.check),
      diff: Boolean(values.diff),
      force: Boolean(values.force),
      json: Boolean(values.json),
      command: ['citadel', ...process.argv.slice(2)].join(' '),
    })
  } catch (err) {
    if (err instanceof LockHeldError || err instanceof LockUnreadableError) {
      process.stderr.write(`citadel: ${err.message}\n`)
      return EXIT.locked
    }
    // The world's failure outside any task (the app root's disk, say): one line, as a task's would be.
    if (isInternalError(err)) throw err
    const code = (err as NodeJS.ErrnoException).code
    process.stderr.write(`citadel: ${(err as Error).message}${typeof code === 'string' ? systemHint(code, settings.appRoot) : ''}\n`)
    return EXIT.failed
  }
}

const show = (text: string): number => {
  process.stdout.write(text + '\n')
  return 0
}

async function taskCommand(step: Omit<Step, 'when' | 'needs'>, argv: string[]): Promise<number> {
  const { task } = step
  const own = Object.fromEntries(argFields(task.args).filter((a) => !a.positional).map((a) => [a.name, a.flag ? { type: 'boolean' as const } : { type: 'string' as const, multiple: a.list }]))
  const { values, positionals } = parse(argv, { ...RUN_OPTIONS, ...own })
  if (values.help) return show(taskHelp(task))
  return runTasks(null, [ready({ ...step, args: { ...step.args, ...commandLineArgs(task, values, positionals) }, needs: [] })], values)
}

/** Each command: its arguments in, its exit code out. */
const COMMANDS: Record<string, (args: string[]) => Promise<number>> = {
  async run(args) {
    const { values, positionals } = parse(args, RUN_OPTIONS)
    if (values.help) return show(HELP.run!)
    if (positionals.length !== 1) throw new UsageError(`run takes one playbook name; expected one of: ${playbooks.map((p) => p.name).join(', ')}`)
    const playbook = findPlaybook(positionals[0]!)
    // Every step, chosen or not: a step whose arguments its task refuses is a broken playbook.
    const entries = playbookEntries(playbook).map((e) => ready(e, `playbook ${playbook.name}, step ${e.name}: `))
    return runTasks(playbook, select(entries, values), values)
  },
  async task([name, ...args]) {
    if (name === '-h' || name === '--help') return show(HELP.task!)
    if (name === undefined || name.startsWith('-')) throw new UsageError(`task takes a task name; expected one of: ${tasks.map((t) => t.name).join(', ')}`)
    return taskCommand(findStep(name), args)
  },
  async backup([action, ...args]) {
    if (action === undefined || action === '-h' || action === '--help') return show(HELP.backup!)
    const task = tasks.find((t) => t.name === `backup-${action}`)
    if (!task) throw new UsageError(`unknown backup action "${action}"; expected create, verify, cleanup, status or restore`)
    // --remote is the alias remote-backup-ACTION: the same task on BACKUP_REMOTE, under that name.
    const remote = args.includes('--remote')
    return taskCommand(stepOf(task, remote ? `remote-${task.name}` : task.name), args.filter((a) => a !== '--remote'))
  },
  async model([action, ...args]) {
    if (action === undefined || action === '-h' || action === '--help') return show(HELP.model!)
    const task = tasks.find((t) => t.name === `model-${action}`)
    if (!task) throw new UsageError(`unknown model action "${action}"; expected ${tasks.filter((t) => t.name.startsWith('model-')).map((t) => t.name.slice('model-'.length)).join(', ')}`)
    return taskCommand(stepOf(task), args)
  },
  async 'health-check'(args) {
    const { values } = parse(args, { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } })
    if (values.help) return show(HELP['health-check']!)
    const settings = await settingsOrNull()
    const { healthCheck } = await import('./health-commands.ts')
    return settings ? healthCheck(settings, Boolean(values.json)) : PLUGIN_EXIT.unknown
  },
  async status(args) {
    const { values } = parse(args, { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } })
    if (values.help) return show(HELP.status!)
    const settings = await settingsOrNull()
    const { status } = await import('./health-commands.ts')
    return settings ? status(settings, Boolean(values.json)) : EXIT.invalid
  },
  async monitor(args) {
    const { values } = parse(args, { interval: { type: 'string' }, once: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } })
    if (values.help) return show(HELP.monitor!)
    const invalid = values.once ? PLUGIN_EXIT.unknown : EXIT.invalid
    const interval = values.interval
    if (typeof interval === 'string' && !(/^\d+$/.test(interval) && Number(interval) >= 1)) {
      process.stderr.write(`citadel: --interval "${interval}" is not valid: expected a whole number of seconds, at least 1\n`)
      return invalid
    }
    const settings = await settingsOrNull()
    if (!settings) return invalid
    const { runMonitor } = await import('../monitor/monitor.ts')
    return runMonitor({ settings, intervalSeconds: typeof interval === 'string' ? Number(interval) : settings.monitor.checkInterval, once: Boolean(values.once), repair: repairLinks })
  },
  async check(args) {
    const { values, positionals } = parse(args, { help: { type: 'boolean', short: 'h' } })
    if (values.help) return show(HELP.check!)
    if (positionals.length) throw new UsageError(`check takes no arguments, got "${positionals[0]}"`)
    const { checkSources } = await import('./check.ts')
    return checkSources()
  },
  async 'start-monitor'(args) {
    const { values, positionals } = parse(args, { help: { type: 'boolean', short: 'h' } })
    if (values.help) return show(HELP['start-monitor']!)
    if (positionals.length) throw new UsageError(`start-monitor takes no arguments, got "${positionals[0]}"`)
    const settings = await settingsOrNull()
    const { startMonitor } = await import('./health-commands.ts')
    return settings ? startMonitor(settings) : EXIT.invalid
  },
  smart: (args) => taskCommand(findStep('check-smart'), args),
  perf: (args) => taskCommand(findStep('check-perf'), args),
  async list(args) {
    const { values } = parse(args, { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } })
    if (values.help) return show(HELP.list!)
    list(Boolean(values.json))
    return 0
  },
  async help([topic]) {
    if (topic === undefined) return show(HELP.main!)
    return show(HELP[topic] ?? taskHelp(findStep(topic).task))
  },
}

/**
 * Exits once stdout has been written out: on a pipe, process.exit() would cut a long --json document
 * short (`citadel backup verify --json | jq` on a backup of many files).
 */
/** The monitor's repair: repair-symlinks through the runner, which (with listr2) loads only when a link needs it. */
async function repairLinks(settings: Settings): Promise<void> {
  const [{ run }, { default: repairSymlinks }] = await Promise.all([import('../core/runner.ts'), import('../../tasks/repair-symlinks.ts')])
  await run({ playbook: null, tasks: [{ task: repairSymlinks, args: {} }], settings, check: false, diff: false, force: false, json: false, quiet: true, command: 'citadel monitor: repair-symlinks' })
}

export function exitWhenFlushed(code: number): void {
  process.stdout.write('', () => process.exit(code))
}

/** Whether `argv` asks for a monitoring plugin's answer, where anything but 0-2 must read as UNKNOWN. */
const answersAsPlugin = (argv: string[]) => argv[0] === 'health-check' || (argv[0] === 'monitor' && argv.includes('--once'))

/**
 * Runs the command line `argv` (without node and script); resolves to the exit code. What escapes a
 * command is one line and exit 2 when the world failed (a system error), its stack and exit 1 when it is
 * a bug; a monitoring plugin answers UNKNOWN (3) either way, as Nagios reads 1 as WARNING.
 */
export async function main(argv: string[], standalone?: Task): Promise<number> {
  try {
    return await dispatch(argv, standalone)
  } catch (err) {
    const internal = isInternalError(err)
    const message = err instanceof Error ? err.message : String(err)
    if (!standalone && answersAsPlugin(argv) && !argv.includes('--json')) process.stdout.write(`CITADEL UNKNOWN - citadel itself failed: ${message}\n`)
    process.stderr.write(internal
      ? `citadel: internal error (a bug in citadel, please report it): ${err instanceof Error ? (err.stack ?? message) : message}\n`
      : `citadel: ${message}\n`)
    return !standalone && answersAsPlugin(argv) ? PLUGIN_EXIT.unknown : internal ? EXIT.internal : EXIT.failed
  }
}

async function dispatch(argv: string[], standalone?: Task): Promise<number> {
  try {
    if (standalone) return await taskCommand(stepOf(standalone), argv)
    const [command, ...rest] = argv
    if (command === undefined) {
      process.stderr.write(HELP.main + '\n')
      return EXIT.invalid
    }
    if (command === '-h' || command === '--help') return show(HELP.main!)
    const handler = COMMANDS[command]
    if (!handler) throw new UsageError(`unknown command "${command}"; expected ${Object.keys(COMMANDS).join(', ')} (see citadel --help)`)
    return await handler(rest)
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    process.stderr.write(`citadel: ${err.message}\n`)
    return EXIT.invalid
  }
}
