// Runs an ordered list of tasks: takes the lock, rolls back what a killed run left behind, shows progress
// with listr2, handles a failure as the playbook declares (roll the whole run back, or undo only the failed
// task's changes and go on with the steps that do not need it), then reports.
import { EXIT } from './exit.ts'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { Listr } from 'listr2'
import type { Settings } from '../infra/config.ts'
import { fileStamp, lstatOrNull } from '../infra/fsx.ts'
import { ensureDir, ensureFile, ensureLink } from './ensure.ts'
import { Journal, JournalError, journalFile, type JournalEntry, type RollbackStep } from './journal.ts'
import { healthDir, logsDir, stateDir } from '../infra/layout.ts'
import { Lock, processRuns } from './lock.ts'
import { refusal as rootsRefusal } from './marks.ts'
import { RunLog } from './log.ts'
import { formatReport, toReport, type RunReport, type TaskRecord } from './report.ts'
import { makeShell } from '../infra/shell.ts'
import type { Shell } from 'zx/core'
import { isInternalError, type Change, type FailurePolicy, type Task, type TaskArgs, type TaskContext, type TaskResult, type When } from './task.ts'


export interface RunRequest {
  playbook: string | null
  /** 'continue' when not given: a single task (`citadel task`) keeps its changes on success, undoes them on failure. */
  onFailure?: FailurePolicy
  /**
   * `name`: what the report and the log call the step, the task's own name by default (see PlaybookStep);
   * `needs`: names of earlier steps of this run that must have completed for this one to run.
   */
  tasks: { task: Task; name?: string; args: TaskArgs; when?: When | undefined; needs?: string[] }[]
  settings: Settings
  check: boolean
  diff: boolean
  force: boolean
  json: boolean
  /** Print nothing, neither progress nor report: the monitor runs a repair inside its own loop. */
  quiet?: boolean
  /** Receives the report (what --json prints) instead of stdout: for a caller in the same process. */
  report?: (report: RunReport) => void
  /**
   * Reads the settings again, for a run that rolled back what a killed run left: the rollback may have put
   * back the settings file that run rewrote (model promote's MODEL_REGISTRY). Null when they no longer
   * load, their problems printed.
   */
  reloadSettings?: () => Promise<Settings | null>
  command: string
}

class Interrupted extends Error {
  constructor() {
    super('interrupted by signal')
  }
}

const say = (line: string) => process.stderr.write(`citadel: ${line}\n`)

interface RunState {
  req: RunRequest
  log: RunLog
  journal: Journal
  shell: Shell
  /** The records of the tasks finished so far, in order. */
  records: TaskRecord[]
  /** Aborted by the first SIGINT or SIGTERM. */
  signal: AbortSignal
  /** What tasks asked to run after their changes are undone, in the order they asked. */
  afterUndo: { task: string; what: string; step: () => Promise<string | void> }[]
}

/** What a recovery hook gets: the settings of the run that found the journal, its shell and its log. */
export interface RecoveryContext { settings: Settings; $: Shell; log: (event: string, fields?: Record<string, unknown>) => void; progress: (text: string) => void }
const recoveryHooks = new Map<string, (ctx: RecoveryContext) => Promise<string | void>>()

/**
 * Names a step that must follow the undo of a killed run's changes (see TaskContext.afterUndo): the run
 * that finds them in the journal undoes them, then calls the hook. Registered when its module loads.
 */
export function registerRecovery(name: string, hook: (ctx: RecoveryContext) => Promise<string | void>): void {
  recoveryHooks.set(name, hook)
}

/** A rollback's own lines: the after-undo entries are not changes, and this run has their steps in memory. */
const changesOnly = (steps: RollbackStep[]) => steps.filter((s) => s.undo?.op !== 'after-undo')

/** Calls, in the order of the rollback, the hooks a killed run's journal asked for after its undo; their steps. */
async function runRecoveryHooks(steps: RollbackStep[], ctx: RecoveryContext): Promise<RollbackStep[]> {
  const done: RollbackStep[] = []
  for (const s of steps) {
    if (s.undo?.op !== 'after-undo') continue
    const { hook: name, what } = s.undo
    const hook = recoveryHooks.get(name)
    try {
      if (!hook) throw new Error(`this citadel has no step named ${name}`)
      done.push({ ...s, done: true, msg: (await hook(ctx)) || what })
    } catch (err) {
      done.push({ ...s, done: false, msg: `${what} failed: ${(err as Error).message}` })
    }
  }
  return done
}

/** Runs, newest first, the steps `task` (every task when null) asked to follow its undo, and forgets them. */
async function runAfterUndo(run: RunState, task: string | null): Promise<RollbackStep[]> {
  const mine = (h: RunState['afterUndo'][number]) => task === null || h.task === task
  const due = run.afterUndo.filter(mine).reverse()
  run.afterUndo = run.afterUndo.filter((h) => !mine(h))
  const steps: RollbackStep[] = []
  for (const h of due) {
    try {
      steps.push({ task: h.task, done: true, msg: (await h.step()) || h.what })
    } catch (err) {
      steps.push({ task: h.task, done: false, msg: `${h.what} failed: ${(err as Error).message}` })
    }
  }
  return steps
}

/** Runs one task, as the step `name`, with its context; whatever happens, returns its record. */
async function execute(run: RunState, task: Task, name: string, args: TaskArgs, progress: (text: string) => void): Promise<TaskRecord> {
  const { req, log, journal } = run
  const { settings, check } = req
  const t0 = Date.now()
  const changes: Change[] = []
  const warnings: string[] = []
  const details: string[] = []
  const result = (status: TaskResult['status'], msg: string, data: Record<string, unknown> = {}): TaskResult => ({ status, msg, changes, warnings, data, details })
  const ctx: TaskContext = {
    task: name,
    settings,
    args,
    signal: run.signal,
    check,
    diff: req.diff,
    force: req.force,
    earlierChanges: run.records.flatMap((r) => r.changes),
    $: run.shell,
    progress,
    log: (event, fields = {}) => log.event(event, { task: name, ...fields }),
    warn: (message) => void warnings.push(message),
    detail: (...lines) => void details.push(...lines),
    async apply(change, undo, act) {
      if (run.signal.aborted) throw new Interrupted()
      changes.push(change)
      if (check) return
      log.event('change', { task: name, ...change })
      if (undo) await journal.record(name, undo)
      try {
        await act()
      } catch (err) {
        if (undo) await journal.cancelLast(name)
        throw err
      }
    },
    ensureDir: (dir, options) => ensureDir(ctx, dir, options),
    ensureLink: (link, target) => ensureLink(ctx, link, target),
    ensureFile: (file, content, mode, action) => ensureFile(ctx, file, content, mode, action),
    async bookkeep(what, write) {
      if (check) return null
      if (run.signal.aborted) throw new Interrupted()
      log.event('bookkeeping', { task: name, what })
      return write()
    },
    finish: (msg, data) => result(changes.length ? 'changed' : 'ok', msg, data),
    fail: (msg, data) => result('failed', msg, data),
    failKeepingChanges: (msg, data) => ({ ...result('failed', msg, data), keepChanges: true }),
    skip: (msg, data) => result('skipped', msg, data),
    async afterUndo(what, step, recovery) {
      if (check) return
      run.afterUndo.push({ task: name, what, step })
      if (recovery !== undefined) await journal.record(name, { op: 'after-undo', hook: recovery, what })
    },
  }
  let outcome: TaskResult
  let internal = false
  try {
    const roots = typeof task.roots === 'function' ? task.roots(args) : task.roots
    const refused = roots?.length ? await rootsRefusal(run.shell, settings, roots, check ? ctx.earlierChanges : []) : null
    outcome = refused ? result('failed', refused) : await task.run(ctx)
  } catch (err) {
    internal = !(err instanceof Interrupted) && isInternalError(err)
    if (!internal) outcome = result('failed', err instanceof Interrupted ? err.message : `error: ${(err as Error).message}`)
    else {
      const message = err instanceof Error ? err.message : String(err)
      const stack = err instanceof Error ? (err.stack ?? message) : `thrown: ${JSON.stringify(err)}`
      log.event('internal-error', { task: name, stack })
      // Without a run log (check mode, or a log disk that failed) the stack has nowhere else to go.
      const where = log.file ? `the stack trace is in ${log.file}` : `stack trace:\n${stack}`
      say(`internal error in task ${name} (a bug in citadel, please report it): ${message}; ${where}`)
      outcome = result('failed', `internal error: ${message}`)
    }
  }
  const record: TaskRecord = { name, ...outcome, ran: true, duration_ms: Date.now() - t0, ...(internal ? { internal: true as const } : {}) }
  log.event('task', { task: name, status: record.status, msg: record.msg, changes: record.changes, warnings: record.warnings })
  return record
}

/** What to do about a system error on the app root, after its code. */
export function systemHint(code: string, appRoot: string): string {
  if (code === 'ENOSPC' || code === 'EDQUOT') return ` (the disk of ${appRoot} is full: free space there and rerun)`
  if (code === 'EACCES' || code === 'EPERM') return ` (run as root or as the owner of ${appRoot})`
  if (code === 'EROFS') return ` (the filesystem of ${appRoot} is read-only)`
  return ''
}

/**
 * Removes the temporary files (tempSibling 'write') that killed processes left in `dir`: a kill between
 * writing health.json's temporary file and renaming it leaves one. The pid in the name tells whose it is;
 * a running writer's (the monitor's) are left alone.
 */
async function removeDeadTemps(dir: string): Promise<void> {
  for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
    const pid = /^\..+\.citadel-write-(\d+)-[0-9a-f]{8}$/.exec(name)?.[1]
    if (pid === undefined || processRuns(Number(pid))) continue
    const file = path.join(dir, name)
    if ((await lstatOrNull(file))?.isFile()) await fs.unlink(file).catch(() => {})
  }
}

/**
 * In a 'continue' run each task settles its journal entries when it ends (the journal then holds only the
 * running task's): a failed task's changes are undone, unless it keeps them; a finished task's are
 * dropped, so neither a later failure nor a kill ever undoes them.
 */
async function settle(run: RunState, record: TaskRecord): Promise<TaskRecord> {
  const { journal, log } = run
  if (record.status !== 'failed' || record.keepChanges) {
    await journal.clear()
    run.afterUndo = run.afterUndo.filter((h) => h.task !== record.name)
    return record
  }
  const steps = [...changesOnly(await journal.rollback()), ...(await runAfterUndo(run, record.name))]
  if (steps.length) log.event('rollback', { task: record.name, steps })
  return { ...record, rolled_back: steps }
}

/** The record of a step that did not run: its condition is false, a step it needs did not complete, or a signal stopped the run. */
function notRun(name: string, msg: string, blockedBy?: string): TaskRecord {
  return { name, status: 'skipped', msg, changes: [], warnings: [], data: {}, details: [], ran: false, duration_ms: 0, ...(blockedBy ? { blocked_by: blockedBy } : {}) }
}

export async function run(req: RunRequest): Promise<number> {
  const started = Date.now()
  const { settings, check } = req
  const runId = `${fileStamp()}-${process.pid}`
  const state = stateDir(settings)
  const log = new RunLog(logsDir(settings), runId, !check)
  // A run of read-only tasks never takes the lock nor touches the journal, which belong to whatever
  // run holds the lock right now.
  const guarded = !check && !req.tasks.every(({ task }) => task.readOnly)
  let lock: Lock | null = null
  if (guarded) {
    try {
      await fs.mkdir(state, { recursive: true, mode: settings.dirMode })
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'error'
      say(`cannot create ${state} (CITADEL_APP_ROOT) for the run's lock and journal: ${code}${systemHint(code, settings.appRoot)}`)
      return EXIT.failed
    }
    try {
      lock = await Lock.acquire(state, req.command, (h) =>
        say(`warning: took over a stale lock of pid ${h.pid} (${h.command}, started ${h.started}); that process is gone`))
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (typeof code !== 'string' || code.startsWith('ERR_')) throw err
      say(`cannot take the run's lock in ${state} (CITADEL_APP_ROOT): ${code}${systemHint(code, settings.appRoot)}; nothing was changed`)
      return EXIT.failed
    }
  }
  if (!check) for (const dir of [healthDir(settings), state]) await removeDeadTemps(dir)
  const journal = new Journal(journalFile(state), runId)
  const abort = new AbortController()
  const onSignal = (signal: NodeJS.Signals) => {
    if (abort.signal.aborted) {
      say(`${signal} again: stopping now; the journal is kept and the next run rolls it back`)
      process.exit(EXIT.interrupted)
    }
    say(req.onFailure !== 'rollback'
      ? `${signal}: stopping the current step and undoing its changes; the steps that finished keep theirs`
      : `${signal}: stopping after the current step, then rolling back`)
    abort.abort(new Interrupted())
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  try {
    log.event('run-start', { command: req.command, playbook: req.playbook, tasks: req.tasks.map((t) => t.name ?? t.task.name), check, pid: process.pid })
    let leftover: JournalEntry[]
    try {
      leftover = await journal.entries()
    } catch (err) {
      if (!(err instanceof JournalError)) throw err
      say(err.message)
      log.event('run-end', { exit: EXIT.failed, error: err.message })
      return EXIT.failed
    }
    if (leftover.length && check) say(`warning: an interrupted run left ${leftover.length} changes in ${journal.file}; the next real run rolls them back`)
    const shell = makeShell((fields) => log.event('command', fields))
    if (leftover.length && guarded) {
      const undone = await journal.rollback()
      const changes = changesOnly(undone)
      say(`rolled back ${changes.filter((s) => s.done).length} of ${changes.length} changes left by an interrupted run:`)
      for (const s of changes) say(`  ${s.done ? 'undone' : 'FAILED'} ${s.msg}`)
      // The tasks of this run, and the steps that follow the undo, work from the settings as they are now.
      const settingsNow = await req.reloadSettings?.()
      if (settingsNow === null) {
        say('the settings no longer load after that rollback; nothing else was run')
        log.event('run-end', { exit: EXIT.invalid, error: 'the settings no longer load after the rollback of an interrupted run' })
        return EXIT.invalid
      }
      if (settingsNow) req = { ...req, settings: settingsNow }
      const hooks = await runRecoveryHooks(undone, { settings: req.settings, $: shell, log: (event, fields = {}) => log.event(event, fields), progress: () => {} })
      for (const s of hooks) say(`  ${s.done ? 'then' : 'FAILED'} ${s.msg}`)
      log.event('recovered', { steps: [...changes, ...hooks] })
    }

    const records: TaskRecord[] = []
    const run: RunState = { req, log, journal, shell, records, signal: abort.signal, afterUndo: [] }
    const policy = req.onFailure ?? 'continue'
    const continuing = policy === 'continue'
    /** Tasks that did not complete, each with the failed task at the root of it. */
    const incomplete = new Map<string, string>()
    const listr = new Listr(
      req.tasks.map(({ task, name = task.name, args, when, needs = [] }) => ({
        title: name,
        task: async (_: unknown, item: { title: string; output: string; skip: (m: string) => void }) => {
          const missing = needs.find((n) => incomplete.has(n))
          let record: TaskRecord
          if (abort.signal.aborted) record = notRun(name, 'not started: interrupted by signal')
          else if (when && !when.test(req.settings)) record = notRun(name, when.otherwise)
          else if (missing !== undefined) {
            const root = incomplete.get(missing)!
            record = notRun(name, `not run: it needs ${missing}, which ${root === missing ? 'failed' : `did not run because ${root} failed`}`, root)
          } else {
            // A few updates a second on a terminal. Elsewhere (a log, the journal under systemd) the line
            // renderer prints every update as a line of its own: one every ten seconds is plenty there.
            let shownAt = 0
            const every = process.stdout.isTTY ? 250 : 10_000
            record = await execute(run, task, name, args, (text) => {
              if (Date.now() - shownAt < every) return
              shownAt = Date.now()
              item.output = text
            })
            if (guarded && continuing) record = await settle(run, record)
          }
          if (!record.ran) log.event('task', { task: name, status: record.status, msg: record.msg, ...(record.blocked_by ? { blocked_by: record.blocked_by } : {}) })
          records.push(record)
          if (record.status === 'failed') incomplete.set(name, name)
          else if (record.blocked_by) incomplete.set(name, record.blocked_by)
          // A failure or skip is shown once while running: on a terminal in the title; elsewhere listr's line
          // renderer adds the message to the title itself ("name [FAILED: msg]").
          const quietTitle = !process.stdout.isTTY && record.status !== 'ok' && record.status !== 'changed'
          item.title = quietTitle ? name : `${name}: ${record.msg}`
          if (record.status === 'skipped') item.skip(record.msg)
          if (record.status === 'failed') throw new Error(record.msg)
        },
      })),
      {
        renderer: req.json || req.quiet ? 'silent' : 'default',
        fallbackRenderer: 'simple',
        exitOnError: !continuing,
        registerSignalListeners: false,
        rendererOptions: { collapseSubtasks: false, showErrorMessage: false },
        fallbackRendererOptions: { timer: undefined },
      },
    )
    await listr.run().catch(() => {})

    const interrupted = abort.signal.aborted
    const failed = records.some((r) => r.status === 'failed') || interrupted
    let rollback: RollbackStep[] = records.flatMap((r) => r.rolled_back ?? [])
    if (guarded && failed && !continuing) {
      rollback = [...changesOnly(await journal.rollback()), ...(await runAfterUndo(run, null))]
      log.event('rollback', { steps: rollback })
    } else if (guarded) await journal.clear()

    const report = toReport(req.playbook, policy, check, records, rollback, interrupted)
    if (req.report) req.report(report)
    else if (!req.quiet) process.stdout.write(req.json ? JSON.stringify(report, null, 2) + '\n' : formatReport(report, records, req.diff, Date.now() - started))
    const code = interrupted ? EXIT.interrupted : records.some((r) => r.internal) ? EXIT.internal : failed ? EXIT.failed : EXIT.ok
    log.event('run-end', { exit: code, stats: report.stats, ms: Date.now() - started })
    return code
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    await lock?.release()
  }
}
