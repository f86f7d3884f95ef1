// Ensures every expected link is right again: recreates missing links, retargets wrong ones, and
// recreates the missing target directory of a broken models/downloads/staging link. Same safety rules
// as create-symlinks: nothing in the way is touched without --force, and then it is moved aside. Unlike
// create-symlinks it repairs every link it can even when another cannot be: each repair is right on its
// own, so a failure for the others keeps it.
import { fixLinks, planLinks } from '../lib/links/links.ts'
import { defineTask, runWhenMain } from '../lib/core/task.ts'
import { summarize } from '../lib/infra/format.ts'

const task = defineTask({
  name: 'repair-symlinks',
  description: 'Fix missing, wrong and broken links (recreating a missing link target on the model disk)',
  tags: ['links', 'repair'],
  roots: ['models'],
  async run(ctx) {
    const plan = await planLinks(ctx)
    for (const s of plan.missingTargets) await ctx.ensureDir(s.target, { mode: ctx.settings.dirMode })
    await fixLinks(ctx, plan.fixes)
    for (const reason of plan.waiting) ctx.detail(`skipped ${reason}`)
    const repairs = [...plan.missingTargets.map((s) => ({ path: s.target, was: 'missing target' })), ...plan.fixes.map((s) => ({ path: s.path, was: s.verdict }))]
    const msg = repairs.length === 0 ? 'nothing to repair' : `${repairs.length} ${ctx.check ? 'to repair' : 'repaired'}`
    const data = { repairs, waiting: plan.waiting, conflicts: plan.conflicts }
    if (plan.conflicts.length) return ctx.failKeepingChanges(`${repairs.length ? `${msg}; ` : ''}cannot repair ${plan.conflicts.length}: ${summarize(plan.conflicts)}`, data)
    return ctx.finish(msg + (plan.waiting.length ? `, ${plan.waiting.length} waiting for their model` : ''), data)
  },
})

export default task
runWhenMain(import.meta)
