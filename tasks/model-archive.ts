// Moves a model directory that no alias serves out of the active models into archive/, by rename (journaled:
// a failed run moves it back); nothing is deleted. When archive/ is on another filesystem it is a copy,
// checked file by file against the source before the source goes (lib/models/move.ts). A directory MODEL_REGISTRY gives an alias is refused,
// naming the alias. When archive/ then holds more versions of an alias than MODEL_ARCHIVE_KEEP, it says which
// `model remove` would free space; it never removes anything itself.
import path from 'node:path'
import { z } from 'zod'
import { defineTask, isInternalError, runWhenMain } from '../lib/core/task.ts'
import { describeEntry, lstatOrNull } from '../lib/infra/fsx.ts'
import { progressLine } from '../lib/infra/format.ts'
import { archiveSurplus, modelDir, surplusOffer } from '../lib/models/list.ts'
import { archiveDir, archiveName, readModelsState } from '../lib/models/promote.ts'
import { crossesFilesystems, moveDirectory } from '../lib/models/move.ts'
import { describeHolders, holdersOf } from '../lib/models/usage.ts'

const task = defineTask({
  name: 'model-archive',
  description: 'Move a model directory no alias uses from the active models into archive/ (renamed, never deleted)',
  tags: ['models'],
  roots: ['models'],
  args: z.object({
    dir: modelDir('the active models').meta({ positional: true, value: 'DIR', description: 'the directory in the active models to archive' }),
  }),
  async run(ctx) {
    const { settings: s } = ctx
    const { dir } = ctx.args
    const live = path.join(s.modelsActive, dir)
    const users = s.models.filter((m) => m.dir === dir).map((m) => m.alias)
    if (users.length) return ctx.fail(`${live} is what ${users.join(' and ')} ${users.length === 1 ? 'serves' : 'serve'} (MODEL_REGISTRY): promote another version (model promote) or change MODEL_REGISTRY first`)
    try {
      const st = await lstatOrNull(live)
      if (!st) {
        if ((await lstatOrNull(path.join(archiveDir(s), dir)))?.isDirectory()) return ctx.finish(`${dir} is in ${archiveDir(s)} already`, { dir, archived: dir })
        return ctx.fail(`${live} is nothing, expected a model directory to archive (citadel model list shows them)`)
      }
      if (!st.isDirectory()) return ctx.fail(`${live} is ${describeEntry(st)}, expected a model directory: only a real directory is archived`)
      const holders = (await holdersOf([live])).get(live)!
      for (const line of describeHolders(holders)) ctx.warn(`${line}: it goes on reading them from archive/`)
      const name = await archiveName(archiveDir(s), dir, new Date())
      const to = path.join(archiveDir(s), name)
      const started = Date.now()
      // Across filesystems the move is a verified copy, then the source's removal: not undone by moving back
      // (that would be a copy again), and needing no undo, as the source goes only once the copy is in place.
      const across = await crossesFilesystems(live, archiveDir(s))
      const undo = across ? null : ({ op: 'move-back', from: to, to: live } as const)
      await ctx.apply({ path: live, action: 'archive model', before: 'served by no alias', after: to }, undo, () => moveDirectory(live, to, {
        signal: ctx.signal,
        onCopy: () => ctx.progress(`copying ${dir} into ${archiveDir(s)}, which is on another filesystem`),
        onVerify: (done, total) => ctx.progress(progressLine('checking the copy against the source', done, total, started)),
      }))
      for (const v of await archiveSurplus(s, await readModelsState(s))) ctx.warn(await surplusOffer(s, v))
      return ctx.finish(`${dir} ${ctx.check ? 'would move' : 'moved'} to archive/${name}`, { dir, archived: name })
    } catch (err) {
      if (isInternalError(err)) throw err
      return ctx.fail((err as Error).message)
    }
  },
})

export default task
runWhenMain(import.meta)
