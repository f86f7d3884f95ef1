// Ensures <app root>/models, downloads, staging and model-links/<alias> point where the settings say.
// Replaces a wrong link atomically; a real file or directory in the way is moved aside only with --force.
import { fixLinks, planLinks } from '../lib/links/links.ts'
import { defineTask, runWhenMain } from '../lib/core/task.ts'
import { summarize } from '../lib/infra/format.ts'

const task = defineTask({
  name: 'create-symlinks',
  description: 'Point the app links (models, downloads, staging, model-links/<alias>) at the model disk',
  tags: ['setup', 'links'],
  roots: ['models'],
  async run(ctx) {
    const plan = await planLinks(ctx)
    if (plan.conflicts.length) return ctx.fail(summarize(plan.conflicts), { conflicts: plan.conflicts })
    await fixLinks(ctx, plan.fixes)
    for (const reason of plan.waiting) ctx.detail(`skipped ${reason}`)
    const right = plan.states.length - plan.fixes.length - plan.waiting.length
    // A fresh server has nothing broken: its links are created, not fixed.
    const created = plan.fixes.filter((s) => s.verdict === 'missing').length
    const fixed = plan.fixes.length - created
    const would = ctx.check ? 'to be ' : ''
    const msg = [created && `${created} ${would}created`, fixed && `${fixed} ${ctx.check ? 'to fix' : 'fixed'}`, `${right} right`, plan.waiting.length && `${plan.waiting.length} waiting for their model`].filter(Boolean).join(', ')
    return ctx.finish(msg, { links: plan.states.map(({ path, target, model }) => ({ path, target, model: model ?? null })), waiting: plan.waiting })
  },
})

export default task
runWhenMain(import.meta)
