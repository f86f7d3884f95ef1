// Ensures every expected link is right again: recreates missing links, retargets wrong ones, and
// recreates the missing target directory of a broken models/downloads/staging link. Same safety rules
// as create-symlinks: nothing in the way is touched without --force, and then it is moved aside.
import { promises as fs } from 'node:fs'
import { fixLinks, planLinks } from '../lib/links.ts'
import { summarize } from '../lib/report.ts'
import { defineTask, runWhenMain } from '../lib/task.ts'

const task = defineTask({
  name: 'repair-symlinks',
  description: 'Fix missing, wrong and broken links (recreating a missing link target on the model disk)',
  tags: ['links', 'repair'],
  roots: ['models'],
  async run(ctx) {
    const plan = await planLinks(ctx)
    if (plan.conflicts.length) return ctx.fail(summarize(plan.conflicts), { conflicts: plan.conflicts })
    for (const s of plan.missingTargets) {
      await ctx.apply({ path: s.target, action: 'create missing link target', before: null, after: 'directory' }, { op: 'rmdir', path: s.target }, async () => {
        await fs.mkdir(s.target, { mode: ctx.settings.dirMode })
        await fs.chmod(s.target, ctx.settings.dirMode)
      })
    }
    await fixLinks(ctx, plan.fixes)
    for (const reason of plan.waiting) ctx.detail(`skipped ${reason}`)
    const repairs = [...plan.missingTargets.map((s) => ({ path: s.target, was: 'missing target' })), ...plan.fixes.map((s) => ({ path: s.path, was: s.verdict }))]
    const msg = repairs.length === 0 ? 'nothing to repair' : `${repairs.length} ${ctx.check ? 'to repair' : 'repaired'}`
    return ctx.finish(msg + (plan.waiting.length ? `, ${plan.waiting.length} waiting for their model` : ''), { repairs, waiting: plan.waiting })
  },
})

export default task
runWhenMain(import.meta, task)
