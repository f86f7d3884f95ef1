// Puts back the newest archived version of ALIAS that is not marked bad: renamed from archive/ into the
// active models, the link flipped back, MODEL_REGISTRY and storage-env.sh rewritten, and the version it
// replaces renamed into archive/ with the bad mark, so that no later rollback picks it. The same journaled
// order as promote (lib/models/promote.ts), and the same server step (lib/models/server.ts). Each run
// goes one good version further back, so it is not idempotent: a second run is a second rollback.
import path from 'node:path'
import { z } from 'zod'
import { defineTask, isInternalError, runWhenMain } from '../lib/core/task.ts'
import { lstatOrNull } from '../lib/infra/fsx.ts'
import { aliasName, archiveDir, readModelsState, rollbackCandidates, switchVersion } from '../lib/models/promote.ts'
import { serveVersion } from '../lib/models/server.ts'
import { autoBackup, registryFile, unservedLine } from './model-promote.ts'

const task = defineTask({
  name: 'model-rollback',
  description: 'Bring back the newest archived version of ALIAS not marked bad; the version it replaces is archived with the bad mark',
  tags: ['models'],
  roots: ['models'],
  idempotent: false,
  args: z.object({
    alias: aliasName.meta({ positional: true, value: 'ALIAS', description: 'the MODEL_REGISTRY alias to roll back' }),
  }),
  async run(ctx) {
    const { settings: s } = ctx
    const { alias } = ctx.args
    const current = s.models.find((m) => m.alias === alias)
    if (!current) return ctx.fail(`${alias} is not in MODEL_REGISTRY (${s.models.map((m) => m.alias).join(', ') || 'empty'}); give a registered alias`)
    const { file, refusal } = registryFile(ctx)
    if (refusal) return ctx.fail(refusal)
    try {
      const state = await readModelsState(s)
      const candidate = (await rollbackCandidates(s, state, alias)).at(-1)
      if (!candidate) {
        const bad = (state.aliases[alias]?.archived ?? []).filter((v) => v.bad).length
        return ctx.fail(`nothing to roll ${alias} back to: ${archiveDir(s)} holds no earlier version of it${bad ? ` that is not marked bad (${bad} ${bad === 1 ? 'is' : 'are'})` : ''}; it stays on ${current.dir}`)
      }
      // A version kept in active/ comes back where it is. One from archive/ comes back under its old name, or
      // under its archive name when another directory took the old one since.
      const kept = candidate.archive === null
      const dir = kept || !(await lstatOrNull(path.join(s.modelsActive, candidate.dir))) ? candidate.dir : candidate.archive!
      const from = kept ? null : path.join(archiveDir(s), candidate.archive!)
      const outcome = await switchVersion(ctx, alias, { from, dir, action: 'reactivate model', archived: candidate }, file, true)
      if (outcome.kept) ctx.warn(outcome.kept)
      const unserved = await serveVersion(ctx, alias, path.join(s.modelsActive, dir))
      if (unserved) return ctx.fail(unservedLine(unserved, alias, current.dir))
      await autoBackup(ctx)
      const would = ctx.check ? 'would serve' : 'serves'
      return ctx.finish(`${alias} ${would} ${dir} again (archived ${candidate.archived_at}); ${current.dir} ${ctx.check ? 'would be' : 'is'} marked bad${outcome.archived ? ` in archive/${outcome.archived}` : ''}`, {
        alias, dir, path: path.join(s.modelsActive, dir), previous: current.dir, archived: outcome.archived,
      })
    } catch (err) {
      if (isInternalError(err)) throw err
      return ctx.fail((err as Error).message)
    }
  },
})

export default task
runWhenMain(import.meta)
