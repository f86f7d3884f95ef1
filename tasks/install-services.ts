// Ensures citadel's systemd units are in CITADEL_SYSTEMD_DIR: citadel-monitor.service (sandboxed), and
// citadel-daily/weekly.service with their timers. Each file is written atomically and only when it differs.
// Where systemd runs, the units are then reloaded, enabled and started; elsewhere (a container, CI) the files
// are written and the task says how to run the monitor by hand. Rendering and escaping: lib/systemd/units.ts.
import path from 'node:path'
import { describeEntry, lstatOrNull, readFileOrNull, which } from '../lib/infra/fsx.ts'
import { ENABLED_UNITS, managerReads, renderUnits, scheduleProblem, showUnits, systemdRunning, UnitError, type UnitFile } from '../lib/systemd/units.ts'
import { defineTask, runWhenMain } from '../lib/core/task.ts'

const task = defineTask({
  name: 'install-services',
  description: 'Write the systemd units (the monitor service, timers for the daily and weekly playbooks) and enable them where systemd runs',
  tags: ['setup', 'systemd'],
  async run(ctx) {
    const { systemd } = ctx.settings
    const dir = systemd.dir
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
    const would = ctx.check ? 'would be ' : ''
    const head = written.length ? `${written.length} of ${units.length} units ${would}written to ${dir}` : `${units.length} units up to date in ${dir}`
    const data = { dir, units: units.map((u) => u.name), written, systemd: systemdRunning() ? 'running' : 'not running' }
    if (data.systemd === 'not running') {
      ctx.warn('systemd is not running here, so nothing was enabled: run the monitor in the foreground with `citadel monitor` (under tmux or your container\'s supervisor), and `citadel run daily` / `citadel run weekly` from cron')
      return ctx.finish(`${head}; systemd is not running: nothing enabled`, data)
    }
    if (ctx.check) return ctx.finish(`${head}; systemctl is not run in check mode`, data)
    if (!(await managerReads(ctx.$, dir))) {
      ctx.warn(`systemd does not load units from ${dir} (CITADEL_SYSTEMD_DIR; see systemd-analyze unit-paths): nothing reloaded nor enabled`)
      return ctx.finish(`${head}; not enabled: systemd does not read ${dir}`, data)
    }
    if (written.length) await ctx.apply({ path: dir, action: 'systemctl daemon-reload', before: null, after: null }, null, () => ctx.$`systemctl daemon-reload`)
    const states = await showUnits(ctx.$, ENABLED_UNITS, ['UnitFileState', 'ActiveState'])
    const state = (u: string) => `${states?.get(u)?.UnitFileState ?? 'unknown'}/${states?.get(u)?.ActiveState ?? 'unknown'}`
    // A running monitor or timer whose unit changed picks the change up only when restarted; a running backup is never restarted.
    const restart = ENABLED_UNITS.filter((u) => written.includes(u) && states?.get(u)?.ActiveState === 'active')
    if (restart.length) await ctx.apply({ path: restart.join(' '), action: 'systemctl try-restart', before: null, after: null }, null, () => ctx.$`systemctl try-restart -- ${restart}`)
    const off = ENABLED_UNITS.filter((u) => state(u) !== 'enabled/active')
    if (written.length || off.length)
      await ctx.apply({ path: ENABLED_UNITS.join(' '), action: 'systemctl enable --now', before: ENABLED_UNITS.map(state).join(' '), after: 'enabled/active' }, null, () => ctx.$`systemctl enable --now -- ${ENABLED_UNITS}`)
    return ctx.finish(`${head}; ${ENABLED_UNITS.join(', ')} ${written.length || off.length ? 'enabled and started' : 'enabled and active'}`, data)
  },
})

export default task
runWhenMain(import.meta)
