// The task contract. A task states what it ensures, inspects the current state, and changes only what
// differs through ctx.apply, which journals the undo first and does nothing in check mode. Every task
// returns the same record, whether it runs alone, inside a playbook, or from its own file.
import { realpathSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import type { Shell } from 'zx/core'
import type { Settings } from './config.ts'
import type { Undo } from './journal.ts'

export type Status = 'ok' | 'changed' | 'skipped' | 'failed'

/** One difference a task made (or, in check mode, would make). */
export interface Change {
  path: string
  action: string
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
}

export interface TaskContext {
  readonly task: string
  readonly settings: Settings
  readonly check: boolean
  readonly diff: boolean
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
  /** ok, or changed when apply() recorded changes. */
  finish(msg: string, data?: Record<string, unknown>): TaskResult
  fail(msg: string, data?: Record<string, unknown>): TaskResult
  skip(msg: string, data?: Record<string, unknown>): TaskResult
}

export interface Task {
  name: string
  description: string
  tags: string[]
  run(ctx: TaskContext): Promise<TaskResult>
}

export const defineTask = (task: Task): Task => task

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

/** Lets `tsx tasks/NAME.ts [options]` behave exactly like `citadel task NAME [options]`. */
export function runWhenMain(meta: ImportMeta, task: Task): void {
  if (startedScript() !== fileURLToPath(meta.url)) return
  void import('./cli.ts').then(async (cli) => process.exit(await cli.main(process.argv.slice(2), task)))
}

/** A playbook: the runbook it replaces, as an ordered list of tasks (optionally with extra tags). */
export interface Playbook {
  name: string
  description: string
  tasks: (Task | { task: Task; tags: string[] })[]
}

export const definePlaybook = (playbook: Playbook): Playbook => playbook

export function playbookEntries(p: Playbook): { task: Task; tags: string[] }[] {
  return p.tasks.map((e) => ('task' in e ? { task: e.task, tags: [...e.task.tags, ...e.tags] } : { task: e, tags: e.tags }))
}
