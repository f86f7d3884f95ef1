// Ensures nothing: gives each filesystem under the roots a disk and inode verdict against the monitor
// thresholds. Crossed thresholds are warnings, not failures; it fails only when it cannot measure at all.
import { defineTask, runWhenMain } from '../lib/core/task.ts'
import { filesystemUsage } from '../lib/health/usage.ts'
import { bytes, count, percent, table } from '../lib/infra/format.ts'


const task = defineTask({
  name: 'check-usage',
  description: 'Give each filesystem holding the model, backup and app roots a disk and inode usage verdict against the monitor thresholds',
  tags: ['monitor', 'usage'],
  readOnly: true,
  async run(ctx) {
    const usage = await filesystemUsage(ctx.settings).catch((err: Error) => err)
    if (usage instanceof Error) return ctx.fail(`cannot measure disk usage: ${usage.message}`)
    const { filesystems, problems } = usage
    ctx.detail(...table([
      ['MOUNT', 'ROOTS', 'SIZE', 'USED', 'FREE', 'USE%', 'INODES%', 'VERDICT'],
      ...filesystems.map((f) => [f.mount, f.roots.map((r) => r.name).join(','), bytes(f.size_bytes), bytes(f.used_bytes), bytes(f.available_bytes),
        percent(f.used_ratio), percent(f.inodes_used_ratio), f.severity]),
    ]))
    for (const p of problems) ctx.warn(p.message)
    const critical = problems.filter((p) => p.severity === 'critical').length
    const warning = problems.length - critical
    const verdicts = [critical ? `${critical} critical` : '', warning ? count(warning, 'warning') : ''].filter(Boolean).join(', ') || 'all ok'
    const roots = filesystems.reduce((n, f) => n + f.roots.length, 0)
    return ctx.finish(`${count(roots, 'root')} on ${count(filesystems.length, 'filesystem')}: ${verdicts}`, { filesystems, problems })
  },
})

export default task
runWhenMain(import.meta)
