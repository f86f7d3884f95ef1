// Ensures systemd runs citadel's units: reloaded when their files changed, the monitor and the timers enabled
// and active, and a running monitor or timer restarted when its unit changed (a running backup never is).
// Where systemd does not run (a container, CI) nothing is enabled and the task says how to run the monitor by hand.
import { ENABLED_UNITS, managerReads, showUnits, systemdRunning } from '../lib/systemd/units.ts'
import { defineTask, runWhenMain } from '../lib/core/task.ts'

const task = defineTask({
  name: 'enable-services',
  description: 'Reload systemd when the unit files changed, and enable and start the monitor and the daily and weekly timers',
  tags: ['setup', 'systemd'],
  async run(ctx) {
    const dir = ctx.settings.systemd.dir
    if (!systemdRunning()) {
      ctx.warn('systemd is not running here, so nothing was enabled: run the monitor in the foreground with `citadel monitor` (under tmux or your container\'s supervisor), and `citadel run daily` / `citadel run weekly` from cron')
      return ctx.skip('systemd is not running: nothing enabled')
    }
    if (!(await managerReads(ctx.$, dir))) {
      ctx.warn(`systemd does not load units from ${dir} (CITADEL_SYSTEMD_DIR; see systemd-analyze unit-paths): nothing reloaded nor enabled`)
      return ctx.skip(`not enabled: systemd does not read ${dir}`)
    }
    const before = await showUnits(ctx.$, ENABLED_UNITS, ['LoadState', 'NeedDaemonReload', 'UnitFileState', 'ActiveState'])
    if (!before) return ctx.fail('systemctl show failed: cannot tell the state of the units (see the run log)')
    // systemd itself knows which unit files changed on disk since it loaded them, whoever wrote them.
    const changed = ENABLED_UNITS.filter((u) => before.get(u)?.NeedDaemonReload === 'yes' || before.get(u)?.LoadState === 'not-found')
    if (changed.length) await ctx.apply({ path: dir, action: 'systemctl daemon-reload', before: null, after: null }, null, () => ctx.$`systemctl daemon-reload`)
    const restart = changed.filter((u) => before.get(u)?.ActiveState === 'active')
    if (restart.length) await ctx.apply({ path: restart.join(' '), action: 'systemctl try-restart', before: null, after: null }, null, () => ctx.$`systemctl try-restart -- ${restart}`)
    const state = (u: string) => `${before.get(u)?.UnitFileState ?? 'unknown'}/${before.get(u)?.ActiveState ?? 'unknown'}`
    const off = ENABLED_UNITS.filter((u) => state(u) !== 'enabled/active')
    if (off.length)
      await ctx.apply({ path: off.join(' '), action: 'systemctl enable --now', before: off.map(state).join(' '), after: 'enabled/active' }, null, () => ctx.$`systemctl enable --now -- ${off}`)
    return ctx.finish(`${ENABLED_UNITS.join(', ')} ${changed.length || off.length ? 'enabled and started' : 'enabled and active'}`, { units: ENABLED_UNITS, reloaded: changed.length > 0, restarted: restart, enabled: off })
  },
})

export default task
runWhenMain(import.meta)
