// How a verification is reported: the problems as a table under the task, a one-line result, and the
// verification itself as the task's data. The same for every store; a repair (local only) adds what it
// healed, from where, and what it could not.
import { showName } from '../infra/fsx.ts'
import type { TaskContext, TaskResult } from '../core/task.ts'
import { bytes, count, percent, summarize, table } from '../infra/format.ts'
import type { Repair } from './heal.ts'
import type { Verification } from './store.ts'

/** "2 files in 3 backups from the active models": what a repair healed. */
function healedLine(repair: Repair): string {
  const backups = new Set(repair.healed.flatMap((h) => h.copies.map((c) => c.slice(0, c.indexOf('/')))))
  const from = [...new Set(repair.healed.map((h) => h.from))].join(', ')
  return `${count(repair.healed.length, 'file')} in ${count(backups.size, 'backup')} from ${from}`
}

/** The backup-verify report of one verification of the backup `name`: failed on any problem not healed. */
export function showVerification(ctx: TaskContext, name: string, outcome: { verification: Verification; sampled: string[]; totalBytes: number }, repair: Repair | null = null): TaskResult {
  const { verification: v, sampled } = outcome
  for (const rel of v.transient) ctx.warn(`${rel}: the first read disagreed with the manifest, a second agreed: a read error, not corruption`)
  if (v.problems.length) ctx.detail(...table([['PATH', 'PROBLEM', 'DETAIL'], ...v.problems.map((p) => [showName(p.path), p.kind, p.detail])]))
  const data = { backup: name, verification: v, sampled, ...(repair && { repair }) }
  const lists = v.problems.filter((p) => p.kind === 'list')
  if (lists.length) return ctx.fail(`${name} cannot be verified: ${lists.map((p) => p.detail).join('; ')}`, data)
  const share = percent(outcome.totalBytes > 0 ? v.bytes_hashed / outcome.totalBytes : 1, 0)
  const head = `${name}: ${count(v.files_checked, 'file')} checked, ${v.files_hashed} hashed (${bytes(v.bytes_hashed)}, ${share} of bytes)`
  const healed = new Set(repair?.healed.map((h) => h.path))
  const left = v.problems.filter((p) => !healed.has(p.path))
  const heal = repair?.healed.length ? `; ${ctx.check ? 'would heal' : 'healed'} ${healedLine(repair)}` : ''
  if (left.length) {
    const unhealed = repair?.unhealed.length ? `; could not heal ${summarize(repair.unhealed.map((u) => `${showName(u.path)} (${u.why})`))}` : ''
    const fail = heal ? ctx.failKeepingChanges : ctx.fail
    return fail(`${head}: ${count(left.length, 'problem')}: ${summarize(left.map((p) => `${showName(p.path)}: ${p.kind}`))}${unhealed}${heal}`, data)
  }
  if (heal) return ctx.finish(`${head}: ${count(v.problems.length, 'problem')} found${heal}`, data)
  return ctx.finish(`${head}: ok`, data)
}
