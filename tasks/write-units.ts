// Ensures citadel's systemd unit files are in CITADEL_SYSTEMD_DIR: citadel-monitor.service (sandboxed), and
// citadel-daily/weekly.service with their timers. Each file is written atomically and only when it differs;
// a bad schedule or a value a unit cannot hold writes nothing. Turning them on is enable-services' job.
// Rendering and escaping: lib/systemd/units.ts.
import path from 'node:path'
import { describeEntry, lstatOrNull, readFileOrNull, which } from '../lib/infra/fsx.ts'
import { renderUnits, scheduleProblem, UnitError, type UnitFile } from '../lib/systemd/units.ts'
import { defineTask, runWhenMain } from '../lib/core/task.ts'

const task = defineTask({
  name: 'write-units',
  description: 'Write the systemd units: the monitor service, and the services and timers of the daily and weekly playbooks',
  tags: ['setup', 'systemd'],
  async run(ctx) {
    const dir = ctx.settings.systemd.dir
    let units: UnitFile[]
    try {
      units = renderUnits({ settings: ctx.settings, env: process.env })
    } catch (err) {
      if (err instanceof UnitError) return ctx.fail(`${err.message}; nothing written`)
      throw err
    }
    // Before anything is written (and in check mode too: it only reads), systemd's own parser judges the schedules.
    if (!(await which('systemd-analyze'))) ctx.warn('systemd-analyze not found: CITADEL_DAILY_SCHEDULE and CITADEL_WEEKLY_SCHEDULE were not checked')
    else {
      const bad = await scheduleProblem(ctx.$, ctx.settings)
      if (bad) return ctx.fail(`${bad}; nothing written`)
    }
    const st = await lstatOrNull(dir)
    if (st && !st.isDirectory()) return ctx.fail(`${dir} (CITADEL_SYSTEMD_DIR) is ${describeEntry(st)}, expected a directory`)
    if (!st && !(await lstatOrNull(path.dirname(dir)))?.isDirectory()) return ctx.fail(`neither ${dir} (CITADEL_SYSTEMD_DIR) nor its parent exists`)
    const plan: (UnitFile & { file: string; current: string | null })[] = []
    for (const unit of units) {
      const file = path.join(dir, unit.name)
      const fst = await lstatOrNull(file)
      if (fst && !fst.isFile()) return ctx.fail(`${file} is ${describeEntry(fst)}, expected a unit file: move it away and rerun`)
      plan.push({ ...unit, file, current: fst ? await readFileOrNull(file) : null })
    }
    // Only created: an existing unit directory's mode is systemd's business, not citadel's.
    if (!st) await ctx.ensureDir(dir, { mode: 0o755 })
    const written: string[] = []
    for (const u of plan) {
      if (u.current !== u.content) written.push(u.name)
      await ctx.ensureFile(u.file, u.content, 0o644)
    }
    const data = { dir, units: units.map((u) => u.name), written }
    if (!written.length) return ctx.finish(`${units.length} units up to date in ${dir}`, data)
    return ctx.finish(`${written.length} of ${units.length} units ${ctx.check ? 'would be ' : ''}written to ${dir}`, data)
  },
})

export default task
runWhenMain(import.meta)
