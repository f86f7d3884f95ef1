// Ensures <app root>/state/health.json holds a fresh health report: usage, links, SMART, backups and the
// last perf figures, with every problem and the overall verdict. Problems are warnings of this task, never
// its failure: the report is the verdict, and a playbook goes on to its end (citadel health-check exits
// with the verdict for scripts and monitoring systems).
import { collectHealth, writeHealth } from '../lib/health/health.ts'
import { healthFile } from '../lib/infra/layout.ts'
import { defineTask, runWhenMain } from '../lib/core/task.ts'
import { count } from '../lib/infra/format.ts'

const task = defineTask({
  name: 'health-report',
  description: 'Run every health check and write the report to <app root>/state/health.json',
  tags: ['monitor', 'report'],
  readOnly: true,
  async run(ctx) {
    const report = await collectHealth({ settings: ctx.settings, $: ctx.$, signal: ctx.signal })
    for (const p of report.problems) ctx.warn(`${p.severity}: ${p.message}`)
    const file = healthFile(ctx.settings)
    await ctx.bookkeep('health report', () => writeHealth(ctx.settings, report))
    const problems = report.problems.length ? `, ${count(report.problems.length, 'problem')}` : ''
    return ctx.finish(`overall ${report.overall}${problems}; ${ctx.check ? 'would write' : 'written to'} ${file}`, { ...report })
  },
})

export default task
runWhenMain(import.meta)
