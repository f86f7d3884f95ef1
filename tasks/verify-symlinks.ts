// Ensures nothing: reports one verdict per expected link (ok, missing, wrong-target, broken, not-a-link)
// and fails when any is a problem. A model that is not downloaded yet is reported, not failed.
import { allowPlanned, inspectLinks } from '../lib/links/links.ts'
import { defineTask, runWhenMain } from '../lib/core/task.ts'
import { summarize, table } from '../lib/infra/format.ts'

const task = defineTask({
  name: 'verify-symlinks',
  description: 'Give every expected link a verdict: ok, missing, wrong-target, broken or not-a-link',
  tags: ['setup', 'links', 'verify'],
  // Only reads: it answers while another run holds the lock.
  readOnly: true,
  roots: ['models'],
  async run(ctx) {
    const states = allowPlanned(await inspectLinks(ctx.settings), ctx)
    const links = states.map((s) => ({ path: s.path, expected: s.target, actual: s.actual, verdict: s.verdict, failing: s.failing, reason: s.reason, model: s.model ?? null }))
    ctx.detail(...table([['LINK', 'VERDICT', 'REASON'], ...states.map((s) => [s.path, s.verdict + (s.failing || s.verdict === 'ok' ? '' : ' (not a failure)'), s.reason])]))
    const failing = states.filter((s) => s.failing)
    if (failing.length) return ctx.fail(summarize(failing.map((s) => `${s.path}: ${s.verdict} (${s.reason})`)), { links })
    const pending = states.filter((s) => s.verdict !== 'ok').length
    return ctx.finish(`${states.length - pending} links ok${pending ? `, ${pending} not there yet (not failures)` : ''}`, { links })
  },
})

export default task
runWhenMain(import.meta)
