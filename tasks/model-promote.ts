// Puts staging/DIR live as ALIAS: renamed into the active models, the alias's link flipped in one rename,
// MODEL_REGISTRY rewritten in the env file, storage-env.sh rewritten, and the directory ALIAS served before
// renamed into archive/ (never deleted), where `model rollback` finds it (lib/models/promote.ts). Every step
// is journaled: a failure or a kill leaves the old version live or the new one fully live. With
// VLLM_RESTART_COMMAND set, vLLM is restarted and (with VLLM_URL) must come up serving the new version, or
// the promote fails and is undone (lib/models/server.ts). With MODEL_AUTO_BACKUP=true it ends with a backup
// of the active models; a failed backup is a warning, as the promote itself stands.
import path from 'node:path'
import { z } from 'zod'
import { defineTask, isInternalError, runWhenMain, type TaskContext, type TaskResult } from '../lib/core/task.ts'
import { envFilePath } from '../lib/infra/config.ts'
import { describeEntry, lstatOrNull } from '../lib/infra/fsx.ts'
import { aliasName, dirName, stagingDir, switchVersion, verificationRefusal } from '../lib/models/promote.ts'
import { registryRefusal } from '../lib/models/registry.ts'
import { serveVersion } from '../lib/models/server.ts'
import { installedEnvironment } from '../lib/systemd/units.ts'
import backupCreate from './backup-create.ts'

/** Where MODEL_REGISTRY is rewritten, or why it must not be: shared with model-rollback. */
export function registryFile(ctx: TaskContext): { file: string; refusal: string | null } {
  const file = envFilePath()
  return { file, refusal: registryRefusal(ctx.settings, file, installedEnvironment(ctx.settings.systemd.dir)) }
}

/** The line a failed server step ends the task with: the runner then puts `previous` back and restarts vLLM on it. */
export const unservedLine = (failure: string, alias: string, previous: string | null) =>
  `${failure}; ${alias} ${previous ? `goes back to ${previous}` : 'is taken out again'} and vLLM is restarted (see the rollback)`

/** The backup MODEL_AUTO_BACKUP asks for after a version went live; its failure is only warned about. */
export async function autoBackup(ctx: TaskContext): Promise<void> {
  if (!ctx.settings.modelAutoBackup) return
  ctx.progress('backing up the active models (MODEL_AUTO_BACKUP=true)')
  let result: TaskResult
  try {
    result = await backupCreate.run({ ...ctx, args: backupCreate.args.parse({}) })
  } catch (err) {
    if (isInternalError(err)) throw err
    result = ctx.fail((err as Error).message)
  }
  if (result.status === 'failed') ctx.warn(`the backup MODEL_AUTO_BACKUP=true asks for failed (${result.msg}); the new version is live: run \`citadel backup create\``)
}

const task = defineTask({
  name: 'model-promote',
  description: 'Make staging/DIR the live version of ALIAS: moved into the active models, link flipped atomically, MODEL_REGISTRY and storage-env.sh rewritten, the previous version archived',
  tags: ['models'],
  roots: ['models'],
  args: z.object({
    alias: aliasName.meta({ positional: true, value: 'ALIAS', description: 'the MODEL_REGISTRY alias whose version changes' }),
    dir: dirName.meta({ positional: true, value: 'DIR', description: 'the directory in staging/ to make live' }),
    new: z.boolean().optional().meta({ description: 'ALIAS is not in MODEL_REGISTRY yet: add it' }),
  }),
  async run(ctx) {
    const { settings: s, args } = ctx
    const { alias, dir } = args
    const current = s.models.find((m) => m.alias === alias)
    if (!current && !args.new) return ctx.fail(`${alias} is not in MODEL_REGISTRY (${s.models.map((m) => m.alias).join(', ') || 'empty'}); give a registered alias, or --new to add it`)
    if (current && args.new) return ctx.fail(`${alias} is in MODEL_REGISTRY already (serving ${current.dir}): leave out --new`)
    const { file, refusal } = registryFile(ctx)
    if (refusal) return ctx.fail(refusal)
    const live = path.join(s.modelsActive, dir)
    const staged = path.join(stagingDir(s), dir)
    const stagedSt = await lstatOrNull(staged)
    try {
      if (current?.dir === dir && !stagedSt) {
        // Already promoted: only what a partial hand edit left behind is put right.
        const liveSt = await lstatOrNull(live)
        if (!liveSt?.isDirectory()) return ctx.fail(`${alias} is registered to ${dir}, but ${live} is ${describeEntry(liveSt)} and staging/ holds no ${dir}`)
        await switchVersion(ctx, alias, { from: null, dir, action: 'promote model' }, file, false)
        return ctx.finish(`${alias} serves ${dir}`, { alias, dir, path: live })
      }
      if (!stagedSt?.isDirectory()) return ctx.fail(`${staged} is ${describeEntry(stagedSt)}, expected a model directory to promote (put it in ${stagingDir(s)} first, e.g. with model fetch)`)
      const refused = await verificationRefusal(ctx, staged)
      if (refused) return ctx.fail(refused)
      const outcome = await switchVersion(ctx, alias, { from: staged, dir, action: 'promote model' }, file, false)
      if (outcome.kept) ctx.warn(outcome.kept)
      const unserved = await serveVersion(ctx, alias, live)
      if (unserved) return ctx.fail(unservedLine(unserved, alias, outcome.previous))
      await autoBackup(ctx)
      const would = ctx.check ? 'would serve' : 'serves'
      return ctx.finish(`${alias} ${would} ${dir}${outcome.archived ? `; ${outcome.previous} ${ctx.check ? 'would move' : 'moved'} to archive/${outcome.archived}` : ''}`, { alias, dir, path: live, previous: outcome.previous, archived: outcome.archived })
    } catch (err) {
      if (isInternalError(err)) throw err
      return ctx.fail((err as Error).message)
    }
  },
})

export default task
runWhenMain(import.meta)
