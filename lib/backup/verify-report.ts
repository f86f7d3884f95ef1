// How a verification is reported: the problems as a table under the task, a one-line result, and the
// verification itself as the task's data. The same for every store.
import { showName } from '../infra/fsx.ts'
import type { TaskContext, TaskResult } from '../core/task.ts'
import { bytes, count, percent, summarize, table } from '../infra/format.ts'
import type { Verification } from './store.ts'

/** The backup-verify report of one verification of the backup `name`: failed on any problem. */
export function showVerification(ctx: TaskContext, name: string, outcome: { verification: Verification; sampled: string[]; totalBytes: number }): TaskResult {
  const { verification: v, sampled } = outcome
  for (const rel of v.transient) ctx.warn(`${rel}: the first read disagreed with the manifest, a second agreed: a read error, not corruption`)
  if (v.problems.length) ctx.detail(...table([['PATH', 'PROBLEM', 'DETAIL'], ...v.problems.map((p) => [showName(p.path), p.kind, p.detail])]))
  const lists = v.problems.filter((p) => p.kind === 'list')
  if (lists.length) return ctx.fail(`${name} cannot be verified: ${lists.map((p) => p.detail).join('; ')}`, { backup: name, verification: v, sampled })
  const share = percent(outcome.totalBytes > 0 ? v.bytes_hashed / outcome.totalBytes : 1, 0)
  const head = `${name}: ${count(v.files_checked, 'file')} checked, ${v.files_hashed} hashed (${bytes(v.bytes_hashed)}, ${share} of bytes)`
  const data = { backup: name, verification: v, sampled }
  if (!v.ok) return ctx.fail(`${head}: ${count(v.problems.length, 'problem')}: ${summarize(v.problems.map((p) => `${showName(p.path)}: ${p.kind}`))}`, data)
  return ctx.finish(`${head}: ok`, data)
}
