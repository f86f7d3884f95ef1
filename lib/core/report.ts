// What a run prints after its tasks: details per task, diffs with --diff, rollback, and the recap line;
// or, with --json, one document built from the same records.
import { z } from 'zod'
import { lineDiff } from '../infra/format.ts'
import { CHANGE_ACTIONS, type ChangeAction } from './actions.ts'
import type { RollbackStep } from './journal.ts'
import type { Change, FailurePolicy, Status, TaskResult } from './task.ts'

export interface TaskRecord extends TaskResult {
  name: string
  /** false when the step did not run: a step it needs did not complete, or a signal stopped the run. */
  ran: boolean
  /** The failed step that kept this one from running. */
  blocked_by?: string
  /** The task threw: a bug in citadel, exit 1. */
  internal?: true
  /** In a 'continue' run, the failed task's own changes, undone. */
  rolled_back?: RollbackStep[]
  duration_ms: number
}

const status = z.enum(['ok', 'changed', 'skipped', 'failed']) satisfies z.ZodType<Status>
const count = z.number().int().nonnegative()

export const changeSchema = z.strictObject({
  path: z.string(),
  action: z.enum(Object.keys(CHANGE_ACTIONS) as [ChangeAction, ...ChangeAction[]]).describe('what kind of change: see Change actions in docs/json.md'),
  before: z.string().nullable().describe('null when absent; a whole file content for files'),
  after: z.string().nullable(),
}) satisfies z.ZodType<Change>

export const jsonTaskSchema = z.strictObject({
  name: z.string(),
  status,
  msg: z.string().describe('one line'),
  changes: z.array(changeSchema).describe('what changed, or under --check what would change'),
  warnings: z.array(z.string()).describe('what did not fail the task but needs a look'),
  data: z.record(z.string(), z.unknown()).describe("the task's own figures: backup-status's are in backup-status.schema.json"),
  ran: z.boolean().describe('false when the step did not run: its when condition was false, a step it needs did not complete, or a signal stopped the run'),
  blocked_by: z.string().optional().describe('the failed step that kept this one from running'),
  internal: z.literal(true).optional().describe('the task threw: a bug in citadel, exit 1'),
  kept_changes: z.literal(true).optional().describe('a failed task that keeps its changes, each right on its own (repair-symlinks)'),
  duration_ms: z.number().nonnegative(),
})

/** What --json of `citadel run` and `citadel task` prints: one document, built from the task records. */
export const runReportSchema = z.strictObject({
  playbook: z.string().nullable().describe('null for citadel task'),
  on_failure: z.enum(['rollback', 'continue']).describe("the playbook's policy; continue for citadel task") satisfies z.ZodType<FailurePolicy>,
  check: z.boolean().describe('true under --check, where changes are what would change'),
  tasks: z.array(jsonTaskSchema),
  stats: z.strictObject({ ok: count, changed: count, failed: count, skipped: count }),
  failed: z.array(z.string()).describe('every failed step, in order'),
  rolled_back: z.array(z.strictObject({
    task: z.string(),
    done: z.boolean(),
    msg: z.string(),
    after_undo: z.literal(true).optional().describe('not a change but a step a task asked to follow the undo, such as vLLM restarted on the previous version'),
  })).describe("each undone change, newest first: under rollback every change of the run, under continue the failed steps' own; then the steps that follow the undo"),
  interrupted: z.boolean(),
})

export type RunReport = z.infer<typeof runReportSchema>

export function stats(records: TaskRecord[]): Record<Status, number> {
  const counts: Record<Status, number> = { ok: 0, changed: 0, failed: 0, skipped: 0 }
  for (const r of records) counts[r.status]++
  return counts
}

export function toReport(playbook: string | null, onFailure: FailurePolicy, check: boolean, records: TaskRecord[], rollback: RollbackStep[], interrupted: boolean): RunReport {
  return {
    playbook,
    on_failure: onFailure,
    check,
    tasks: records.map(({ details: _details, keepChanges, rolled_back: _undone, ...rest }) => (keepChanges ? { ...rest, kept_changes: true as const } : rest)),
    stats: stats(records),
    failed: records.filter((r) => r.status === 'failed').map((r) => r.name),
    rolled_back: rollback.map((s) => ({ task: s.task, done: s.done, msg: s.msg, ...(s.undo ? {} : { after_undo: true as const }) })),
    interrupted,
  }
}

export function formatChange(c: Change, withDiff: boolean): string[] {
  const lines = [`    ${c.action} ${JSON.stringify(c.path).slice(1, -1)}`]
  if (!withDiff) return lines
  const multiLine = (c.before ?? '').includes('\n') || (c.after ?? '').includes('\n')
  if (multiLine) return lines.concat(lineDiff(c.before ?? '', c.after ?? '').map((l) => '      ' + l))
  return lines.concat([`      - ${c.before ?? '(absent)'}`, `      + ${c.after ?? '(absent)'}`])
}

export function formatReport(report: RunReport, records: TaskRecord[], withDiff: boolean, elapsedMs: number): string {
  const out: string[] = ['']
  for (const t of records) {
    out.push(`${t.status.padEnd(8)} ${t.name}: ${t.msg}`)
    for (const d of t.details) out.push('    ' + d)
    for (const c of t.changes) out.push(...formatChange(c, withDiff))
    for (const w of t.warnings) out.push(`    warning: ${w}`)
  }
  if (report.rolled_back.length) {
    const whose = report.on_failure === 'continue' ? ", the failed steps' own changes" : ''
    const changes = report.rolled_back.filter((s) => !s.after_undo)
    out.push('', `ROLLBACK (${changes.filter((s) => s.done).length}/${changes.length} undone${whose}, newest first)`)
    for (const s of report.rolled_back) out.push(`    ${!s.done ? 'FAILED' : s.after_undo ? 'then' : 'undone'} ${s.msg}`)
  }
  const failed = records.filter((r) => r.status === 'failed')
  const blocked = records.filter((r) => r.blocked_by)
  if (failed.length) {
    const then = report.on_failure === 'continue'
      ? `the other steps ran${report.check ? '' : ' and keep their changes'}`
      : `the run stopped there${report.check ? '' : ' and was rolled back'}`
    // Each failure's message is in its task's line above: here the names, next to the recap.
    const notRun = blocked.length ? `; not run because of ${failed.length === 1 ? 'it' : 'them'}: ${blocked.map((r) => r.name).join(', ')}` : ''
    out.push('', `FAILED (${failed.length}): ${failed.map((r) => r.name).join(', ')}; ${then}${notRun}`)
  }
  if (report.check) out.push('', 'check mode: nothing was changed')
  const s = report.stats
  out.push('', `RECAP  ok=${s.ok} changed=${s.changed} failed=${s.failed} skipped=${s.skipped} elapsed=${(elapsedMs / 1000).toFixed(1)}s`)
  return out.join('\n') + '\n'
}

