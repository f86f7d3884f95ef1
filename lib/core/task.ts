// The task contract. A task states what it ensures, inspects the current state, and changes only what
// differs through ctx.apply, which journals the undo first and does nothing in check mode. Every task
// returns the same record, whether it runs alone, inside a playbook, or from its own file.
import { spawn } from 'node:child_process'
import { realpathSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Shell } from 'zx/core'
import type { Settings } from '../infra/config.ts'
import type { z } from 'zod'
import type { ChangeAction } from './actions.ts'
import type { Undo } from './journal.ts'
import { NO_ARGS, type ArgsSchema, type RawArgs } from './args.ts'
import { projectRoot } from '../infra/fsx.ts'

export type Status = 'ok' | 'changed' | 'skipped' | 'failed'

/** One difference a task made (or, in check mode, would make). */
export interface Change {
  path: string
  action: ChangeAction
  before: string | null
  after: string | null
}

export interface TaskResult {
  status: Status
  msg: string
  changes: Change[]
  warnings: string[]
  data: Record<string, unknown>
  /** Lines shown under the task in human output (a table, say); --json carries `data` instead. */
  details: string[]
  /**
   * A failure that keeps the task's changes: each change is right on its own (a repaired link), so undoing
   * it would only put back what was broken. Only a playbook that rolls the whole run back undoes them.
   */
  keepChanges?: true
}

export interface DirOptions {
  mode: number
  /** Set on a created directory, fixed on an existing one; null or absent leaves the owner as it is. */
  owner?: { uid: number; gid: number } | null
  /** A directory a rollback must not remove (the app root, which holds the run's own lock and log). */
  keepOnRollback?: boolean
}

/** What an ensure helper did (or, in check mode, would do). */
export type Outcome = 'created' | 'fixed' | 'ok'

/** A task's arguments after its schema converted and defaulted them: what the runner hands the task. */
export type TaskArgs = Readonly<Record<string, unknown>>

export interface TaskContext<A = TaskArgs> {
  readonly task: string
  readonly settings: Settings
  /** The task's own arguments, converted and defaulted by its schema: from its command line, or from the playbook step. */
  readonly args: A
  /** Aborted when the run is interrupted (SIGINT, SIGTERM): long steps stop and clean up. */
  readonly signal: AbortSignal
  readonly check: boolean
  readonly diff: boolean
  /** --force on the command line; SYMLINK_FORCE_RECREATE is the link tasks' own setting, not this. */
  readonly force: boolean
  /** Changes earlier tasks of this run made, or in check mode would have made. */
  readonly earlierChanges: readonly Change[]
  /** zx, quiet; every command and its exit code goes to the run log. */
  readonly $: Shell
  /** Shows a line of progress under the task while it runs. */
  progress(text: string): void
  log(event: string, fields?: Record<string, unknown>): void
  warn(message: string): void
  detail(...lines: string[]): void
  /** Records `change`; unless in check mode, journals `undo` and then runs `act`. */
  apply(change: Change, undo: Undo | null, act: () => Promise<unknown>): Promise<void>
  /**
   * The usual writes, each through apply() with its own undo (lib/core/ensure.ts). Each throws, changing
   * nothing, when something else is in the way (a file where a directory belongs).
   */
  /** A directory with this mode (and owner): created, or its mode and owner fixed. */
  ensureDir(dir: string, options: DirOptions): Promise<Outcome>
  /** A symlink to `target`: created, or retargeted atomically. */
  ensureLink(link: string, target: string): Promise<Outcome>
  /** A file with this content and mode: written whole by rename, or its mode fixed; `action` names the write in the report. */
  ensureFile(file: string, content: string, mode: number, action?: ChangeAction): Promise<Outcome>
  /**
   * A write that keeps citadel's own records (a verification's result, the perf history) rather than the
   * state the task ensures: not a change, never undone, not made in check mode (resolves to null there).
   */
  bookkeep<T>(what: string, write: () => Promise<T>): Promise<T | null>
  /**
   * Runs `step` once this task's changes are undone (the task failed, or its playbook rolled the run back),
   * after every undo: what must follow the old state back, such as a server restarted on the previous model.
   * Ignored in check mode. Its outcome is a line of the rollback report: what the step returns (`what`
   * when nothing), or `what` and why it failed. With `recovery`, the name of a hook given to
   * registerRecovery, the step is journaled too: when a kill leaves the changes to the next run's rollback,
   * that run calls the hook after it.
   */
  afterUndo(what: string, step: () => Promise<string | void>, recovery?: string): Promise<void>
  /** ok, or changed when apply() recorded changes. */
  finish(msg: string, data?: Record<string, unknown>): TaskResult
  fail(msg: string, data?: Record<string, unknown>): TaskResult
  /** failed, keeping the changes made so far (see TaskResult.keepChanges). */
  failKeepingChanges(msg: string, data?: Record<string, unknown>): TaskResult
  skip(msg: string, data?: Record<string, unknown>): TaskResult
}

export interface Task<S extends ArgsSchema = ArgsSchema> {
  name: string
  description: string
  tags: string[]
  /**
   * What the task takes, as a zod object: each field converts and checks one value and carries, in
   * .meta(), its help (description), whether it is positional and the name of its value (see args.ts).
   */
  args: S
  /**
   * false for an action that makes something new each time it runs (a backup is a new point in time),
   * so a second run changes again; every other task reports no change the second time.
   */
  idempotent?: false
  /**
   * true for a task that only looks (a health check): it runs without the run lock, so an operator can
   * check the disks while a backup runs. Its log still goes to the run log.
   */
  readOnly?: true
  /**
   * The disk roots the task writes to or reads: the runner refuses it before it runs unless their marks hold.
   * A function when they depend on the arguments (a backup task with --remote works on another host).
   */
  roots?: ('models' | 'backup')[] | ((args: z.output<S>) => ('models' | 'backup')[])
  /**
   * Other names the task answers to, each with the arguments it presets: `citadel task remote-backup-create`
   * is backup-create --remote, and runs under its own name.
   */
  aliases?: Record<string, RawArgs>
  run(ctx: TaskContext<z.output<S>>): Promise<TaskResult>
}

/** A task as its file writes it: without args it takes none. */
export type TaskSpec<S extends ArgsSchema> = Omit<Task<S>, 'args'> & { args?: S }

export const defineTask = <S extends ArgsSchema = typeof NO_ARGS>(task: TaskSpec<S>): Task<S> => ({ ...task, args: task.args ?? (NO_ARGS as unknown as S) })

/**
 * A bug in citadel rather than a failure of the world. The world's failures reach a task as a system error
 * (ENOSPC, EACCES: an errno code) or as an Error whose message lib/ wrote for the operator; a TypeError,
 * ReferenceError or RangeError, a Node ERR_* code, or something thrown that is not an Error is a bug.
 * A SyntaxError is JSON.parse meeting a damaged file: the file's fault, not the code's.
 */
export function isInternalError(err: unknown): boolean {
  if (!(err instanceof Error)) return true
  const code = (err as NodeJS.ErrnoException).code
  if (typeof code === 'string') return code.startsWith('ERR_')
  return err instanceof TypeError || err instanceof ReferenceError || err instanceof RangeError || err instanceof EvalError || err instanceof URIError
}

/** The script node was started with, resolved once: every task module asks on load. */
let script: string | null | undefined
const startedScript = () => {
  if (script === undefined) {
    try {
      script = process.argv[1] ? realpathSync(process.argv[1]) : null
    } catch {
      script = null
    }
  }
  return script
}

/**
 * Lets `tsx tasks/NAME.ts [options]` behave exactly like `citadel task NAME [options]`. The command line sits
 * above the tasks, so the file hands itself to it as a program: lib/cli/task-file.ts, started with this
 * process's loader, loads the file and runs it; signals are passed on and its exit code is ours.
 */
export function runWhenMain(meta: ImportMeta): void {
  // The launcher's CommonJS bundle has no import.meta, and no task in it is the started script.
  if (!meta.url) return
  const file = fileURLToPath(meta.url)
  if (startedScript() !== file) return
  const entry = path.join(projectRoot(), 'lib', 'cli', 'task-file.ts')
  const child = spawn(process.execPath, [...process.execArgv, entry, file, ...process.argv.slice(2)], { stdio: 'inherit' })
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => child.kill(signal))
  child.on('exit', (code, signal) => process.exit(code ?? 128 + (signal ? os.constants.signals[signal] : 0)))
}

/** A condition on the settings, as Ansible's `when`; `otherwise` is the reason shown when it is false. */
export interface When { test: (settings: Settings) => boolean; otherwise: string }

/**
 * One step of a playbook: a task, with arguments (as on its command line, checked by the task's schema
 * before anything runs), a condition, extra tags, and the earlier steps it needs (a task, or a step by its
 * name): when one of those failed (or did not run because of a failure), this one does not run either and
 * says why. `name`, the task's by default, is what the report, the log, --start-at-task and `needs` call the
 * step: one of the task's aliases, whose arguments it then takes, so that a playbook can run one task twice
 * (backup-create, then remote-backup-create).
 */
export interface PlaybookStep { task: Task; name?: string; args?: RawArgs; when?: When; tags?: string[]; needs?: (Task | string)[] }

/**
 * How a run fails. 'rollback': all or nothing, the first failed step stops the run and every change of the
 * run is undone (a first setup half done is worse than none). 'continue': a failed step undoes only its own
 * changes, every finished step keeps its own, and the steps that do not need the failed one still run (a
 * maintenance run that repaired a link must not break it again because the backup after it failed).
 */
export type FailurePolicy = 'rollback' | 'continue'

/** A playbook: the runbook it replaces, as an ordered list of tasks. */
export interface Playbook {
  name: string
  description: string
  onFailure: FailurePolicy
  tasks: (Task | PlaybookStep)[]
}

export const definePlaybook = (playbook: Playbook): Playbook => playbook

/** A step as the command line takes it: `args` as given, not yet parsed; `needs` are step names. */
export interface Step { task: Task; name: string; args: RawArgs; when?: When; tags: string[]; needs: string[] }

/** The step that runs `task` under `name`: its own, or one of its aliases with the arguments that presets. */
export function stepOf(task: Task, name = task.name): Omit<Step, 'when' | 'needs'> {
  const preset = name === task.name ? {} : task.aliases?.[name]
  if (!preset) throw new Error(`${name} is neither the name of task ${task.name} nor one of its aliases`)
  return { task, name, args: preset, tags: task.tags }
}

export function playbookEntries(p: Playbook): Step[] {
  return p.tasks.map((e) => {
    if (!('task' in e)) return { ...stepOf(e), needs: [] }
    const step = stepOf(e.task, e.name)
    return { ...e, ...step, args: { ...step.args, ...e.args }, tags: [...step.tags, ...(e.tags ?? [])], needs: (e.needs ?? []).map((n) => (typeof n === 'string' ? n : n.name)) }
  })
}
