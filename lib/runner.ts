// Runs an ordered list of tasks: takes the lock, rolls back what a killed run left behind, shows progress
// with listr2, rolls the whole run back when a task fails or a signal arrives, then reports.
import { promises as fs } from 'node:fs'
import { Listr } from 'listr2'
import type { Settings } from './config.ts'
import { fileStamp } from './fsx.ts'
import { Journal, journalFile, type RollbackStep } from './journal.ts'
import { logsDir, stateDir } from './layout.ts'
import { Lock } from './lock.ts'
import { refusal as rootsRefusal } from './marks.ts'
import { RunLog } from './log.ts'
import { formatReport, toReport, type TaskRecord } from './report.ts'
import { makeShell } from './shell.ts'
import type { Shell } from 'zx/core'
import type { Change, Task, TaskArgs, TaskContext, TaskResult, When } from './task.ts'

export const EXIT = { ok: 0, failed: 2, locked: 3, invalid: 4, interrupted: 99 } as const

export interface RunRequest {
  playbook: string | null
  tasks: { task: Task; args: TaskArgs; when?: When | undefined }[]
  settings: Settings
  check: boolean
  diff: boolean
  force: boolean
  json: boolean
  /** Print nothing, neither progress nor report: the monitor runs a repair inside its own loop. */
  quiet?: boolean
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
}

/** Runs one task with its context; whatever happens, returns its record. */
async function execute(run: RunState, task: Task, args: TaskArgs, when: When | undefined, progress: (text: string) => void): Promise<TaskRecord> {
  const { req, log, journal } = run
  const { settings, check } = req
  const t0 = Date.now()
  const changes: Change[] = []
  const warnings: string[] = []
  const details: string[] = []
  const result = (status: TaskResult['status'], msg: string, data: Record<string, unknown> = {}): TaskResult => ({ status, msg, changes, warnings, data, details })
  const ctx: TaskContext = {
    task: task.name,
    settings,
    args,
    signal: run.signal,
    check,
    diff: req.diff,
    force: req.force || settings.symlinkForceRecreate,
    earlierChanges: run.records.flatMap((r) => r.changes),
    $: run.shell,
    progress,
    log: (event, fields = {}) => log.event(event, { task: task.name, ...fields }),
    warn: (message) => void warnings.push(message),
    detail: (...lines) => void details.push(...lines),
    async apply(change, undo, act) {
      if (run.signal.aborted) throw new Interrupted()
      changes.push(change)
      if (check) return
      log.event('change', { task: task.name, ...change })
      if (undo) await journal.record(task.name, undo)
      try {
        await act()
      } catch (err) {
        if (undo) await journal.cancelLast(task.name)
        throw err
      }
    },
    finish: (msg, data) => result(changes.length ? 'changed' : 'ok', msg, data),
    fail: (msg, data) => result('failed', msg, data),
    skip: (msg, data) => result('skipped', msg, data),
  }
  let outcome: TaskResult
  try {
    const skip = when && !when.test(settings)
    const refused = task.roots && !skip && !run.signal.aborted ? await rootsRefusal(run.shell, settings, task.roots, check ? ctx.earlierChanges : []) : null
    outcome = run.signal.aborted ? result('failed', 'not started: interrupted by signal')
      : skip ? result('skipped', when.otherwise)
      : refused ? result('failed', refused)
      : await task.run(ctx)
  } catch (err) {
    outcome = result('failed', err instanceof Interrupted ? err.message : `error: ${(err as Error).message}`)
  }
  const record: TaskRecord = { name: task.name, ...outcome, duration_ms: Date.now() - t0 }
  log.event('task', { task: task.name, status: record.status, msg: record.msg, changes: record.changes, warnings: record.warnings })
  return record
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
      const hint = ['EACCES', 'EPERM'].includes(code) ? `: run as root or as the owner of ${settings.appRoot}` : ''
      say(`cannot create ${state} (CITADEL_APP_ROOT) for the run's lock and journal: ${code}${hint}`)
      return EXIT.failed
    }
    lock = await Lock.acquire(state, req.command, (h) =>
      say(`warning: took over a stale lock of pid ${h.pid} (${h.command}, started ${h.started}); that process is gone`))
  }
  const journal = new Journal(journalFile(state), runId)
  const abort = new AbortController()
  const onSignal = (signal: NodeJS.Signals) => {
    if (abort.signal.aborted) {
      say(`${signal} again: stopping now; the journal is kept and the next run rolls it back`)
      process.exit(EXIT.interrupted)
    }
    say(`${signal}: stopping after the current step, then rolling back`)
    abort.abort(new Interrupted())
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  try {
    log.event('run-start', { command: req.command, playbook: req.playbook, tasks: req.tasks.map((t) => t.task.name), check, pid: process.pid })
    const leftover = await journal.entries()
    if (leftover.length && check) say(`warning: an interrupted run left ${leftover.length} changes in ${journal.file}; the next real run rolls them back`)
    if (leftover.length && guarded) {
      const steps = await journal.rollback()
      say(`rolled back ${steps.filter((s) => s.done).length} of ${steps.length} changes left by an interrupted run:`)
      for (const s of steps) say(`  ${s.done ? 'undone' : 'FAILED'} ${s.msg}`)
      log.event('recovered', { steps })
    }

    const shell = makeShell((fields) => log.event('command', fields))
    const records: TaskRecord[] = []
    const run: RunState = { req, log, journal, shell, records, signal: abort.signal }
    const listr = new Listr(
      req.tasks.map(({ task, args, when }) => ({
        title: task.name,
        task: async (_: unknown, item: { title: string; output: string; skip: (m: string) => void }) => {
          // A few updates a second on a terminal. Elsewhere (a log, the journal under systemd) the line
          // renderer prints every update as a line of its own: one every ten seconds is plenty there.
          let shownAt = 0
          const every = process.stdout.isTTY ? 250 : 10_000
          const record = await execute(run, task, args, when, (text) => {
            if (Date.now() - shownAt < every) return
            shownAt = Date.now()
            item.output = text
          })
          records.push(record)
          item.title = `${task.name}: ${record.msg}`
          if (record.status === 'skipped') item.skip(`${task.name}: ${record.msg}`)
          if (record.status === 'failed') throw new Error(`${task.name}: ${record.msg}`)
        },
      })),
      {
        renderer: req.json || req.quiet ? 'silent' : 'default',
        fallbackRenderer: 'simple',
        exitOnError: true,
        registerSignalListeners: false,
        rendererOptions: { collapseSubtasks: false, showErrorMessage: false },
        fallbackRendererOptions: { timer: undefined },
      },
    )
    await listr.run().catch(() => {})

    const interrupted = abort.signal.aborted
    const failed = records.some((r) => r.status === 'failed') || interrupted
    let rollback: RollbackStep[] = []
    if (guarded && failed) {
      rollback = await journal.rollback()
      log.event('rollback', { steps: rollback })
    } else if (guarded) await journal.clear()

    const report = toReport(req.playbook, check, records, rollback, interrupted)
    if (!req.quiet) process.stdout.write(req.json ? JSON.stringify(report, null, 2) + '\n' : formatReport(report, records, req.diff, Date.now() - started))
    const code = interrupted ? EXIT.interrupted : failed ? EXIT.failed : EXIT.ok
    log.event('run-end', { exit: code, stats: report.stats, ms: Date.now() - started })
    return code
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    await lock?.release()
  }
}
