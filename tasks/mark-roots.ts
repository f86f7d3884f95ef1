// Ensures the models root and the backup root each carry citadel's mark, and that the app root remembers
// it. A fresh root gets one, so does a root laid out before marks existed (with a warning saying so). A
// root missing the mark this app root remembers, or on another filesystem, is refused: that is an
// unmounted or swapped disk, and only --new-disk lays out a replacement. Runs before create-dirs, while a
// fresh root can still be told apart from one citadel laid out.
import { appLaidOut, inspectRoots, markFile, newMark, NEW_DISK_FLAG, readRemembered, rememberedFile, type Mark, type RootState } from '../lib/core/marks.ts'
import { z } from 'zod'
import { defineTask, runWhenMain } from '../lib/core/task.ts'

const task = defineTask({
  name: 'mark-roots',
  description: 'Mark the models and backup roots as citadel\'s, and refuse a root whose disk is not mounted or was swapped',
  tags: ['setup', 'dirs'],
  args: z.object({
    'new-disk': z.boolean().default(false).meta({ description: 'Mark a replaced disk afresh: a root without its remembered mark, or with another filesystem\'s, gets a new mark' }),
    // A new model disk while the backup disk is dead: its empty mount point must not be marked as a disk.
    root: z.enum(['models', 'backup'], { error: 'expected models or backup' }).optional()
      .meta({ value: 'models|backup', description: 'only this root; the other is neither marked nor checked (its disk is dead and not replaced yet)' }),
  }),
  async run(ctx) {
    const { settings } = ctx
    const newDisk = ctx.args['new-disk']
    const states = await inspectRoots(ctx.$, settings, ctx.args.root ? [ctx.args.root] : undefined)
    const remembered = await readRemembered(settings)
    const wasSetUp = await appLaidOut(settings)
    const problems: string[] = []
    const marks: { state: RootState; mark: Mark; note: string | null }[] = []
    for (const state of states) {
      if (!state.is_dir) problems.push(state.reason)
      else if (state.verdict === 'ok') continue
      else if (newDisk) marks.push({ state, mark: newMark(state.role, state.fs_uuid), note: `marked ${state.path} as a new disk${state.remembered ? ` in place of ${state.remembered.id}` : ''}` })
      else if (state.verdict === 'foreign' || state.remembered) problems.push(state.reason)
      else if (state.laid_out) marks.push({ state, mark: newMark(state.role, state.fs_uuid), note: `${state.path} was laid out before citadel marked its roots: marked it now` })
      else if (state.empty && wasSetUp) problems.push(`${state.setting} ${state.path} is empty, but ${settings.appRoot} was set up before and links there: is the disk mounted? check with findmnt ${state.path}; to lay out a new disk there, run citadel task mark-roots ${NEW_DISK_FLAG}`)
      else marks.push({ state, mark: newMark(state.role, state.fs_uuid), note: null })
    }
    if (problems.length) return ctx.fail(problems.join('; '))

    // A valid mark this app root does not remember yet (a second app root sharing a backup disk) is adopted.
    const roots = { ...remembered.roots }
    for (const state of states) if (state.verdict === 'ok' && state.mark) roots[state.role] = { id: state.mark.id, path: state.path, created: state.mark.created }
    for (const { state, mark } of marks) roots[state.role] = { id: mark.id, path: state.path, created: mark.created }

    for (const { state, mark, note } of marks) {
      await ctx.ensureFile(markFile(state.path), JSON.stringify(mark, null, 2) + '\n', 0o644, 'mark root')
      if (note) ctx.warn(note)
    }
    // The record lives in the state directory, which the runner makes before any task of a real run.
    if (JSON.stringify(roots) !== JSON.stringify(remembered.roots)) await ctx.ensureFile(rememberedFile(settings), JSON.stringify({ format: 1, roots }, null, 2) + '\n', 0o644, 'remember root marks')
    const would = ctx.check ? 'would be ' : ''
    const msg = marks.length ? `${marks.map((m) => m.state.role).join(' and ')} root ${would}marked` : ctx.args.root ? `${ctx.args.root} root marked` : 'both roots marked'
    return ctx.finish(msg, { roots: states.map((s) => ({ role: s.role, path: s.path, verdict: s.verdict, fs_uuid: s.fs_uuid, mark: marks.find((m) => m.state === s)?.mark.id ?? s.mark?.id ?? null })) })
  },
})

export default task
runWhenMain(import.meta)
