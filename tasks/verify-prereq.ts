// Ensures the server can run citadel: tools present, both disks mounted, writable and with free space,
// the configured owner real. Changes nothing; fails on what blocks setup, warns on what degrades it.
import { promises as fs, constants } from 'node:fs'
import { which } from '../lib/infra/fsx.ts'
import { mountOf, resolveOwner } from '../lib/infra/system.ts'
import { defineTask, runWhenMain } from '../lib/core/task.ts'
import { count, table } from '../lib/infra/format.ts'

type Verdict = 'ok' | 'warning' | 'failed'
interface Check { check: string; status: Verdict; detail: string }

const MIN_NODE = [20, 19]
const REQUIRED_TOOLS = [['rsync', 'rsync'], ['sha256sum', 'coreutils'], ['setpriv', 'util-linux']]
const OPTIONAL_TOOLS = [['smartctl', 'smartmontools', 'SMART health'], ['fio', 'fio', 'I/O performance tests'], ['findmnt', 'util-linux', 'mount checks']]
const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(1)} GiB`

const task = defineTask({
  name: 'verify-prereq',
  description: 'Check Node, rsync/sha256sum/smartctl/fio, that both disks are mounted, writable and have room, and the owner',
  tags: ['setup', 'verify'],
  async run(ctx) {
    const checks: Check[] = []
    const add = (check: string, status: Verdict, detail: string) => checks.push({ check, status, detail })

    const [major = 0, minor = 0] = process.versions.node.split('.').map(Number)
    const nodeOk = major > MIN_NODE[0]! || (major === MIN_NODE[0] && minor >= MIN_NODE[1]!)
    add('node', nodeOk ? 'ok' : 'failed', `v${process.versions.node}${nodeOk ? '' : `: needs ${MIN_NODE.join('.')} or newer`}`)
    for (const [tool, pkg] of REQUIRED_TOOLS) {
      const at = await which(tool!)
      add(tool!, at ? 'ok' : 'failed', at ?? `missing: install the ${pkg} package`)
    }
    for (const [tool, pkg, purpose] of OPTIONAL_TOOLS) {
      const at = await which(tool!)
      add(tool!, at ? 'ok' : 'warning', at ?? `missing (needed for ${purpose}): install the ${pkg} package`)
    }

    const canFindMounts = checks.some((c) => c.check === 'findmnt' && c.status === 'ok')
    const roots = [['models root', 'CITADEL_MODELS_ROOT', ctx.settings.modelsRoot], ['backup root', 'CITADEL_BACKUP_ROOT', ctx.settings.backupRoot]] as const
    for (const [label, setting, root] of roots) {
      const st = await fs.stat(root).catch(() => null)
      const writable = st?.isDirectory() ? await fs.access(root, constants.W_OK).then(() => 'yes', (e: NodeJS.ErrnoException) => e.code ?? 'no') : 'no'
      if (!st) add(label, 'failed', `${root} does not exist: mount the disk there, or set ${setting}`)
      else if (!st.isDirectory()) add(label, 'failed', `${root} is not a directory`)
      else add(label, writable === 'yes' ? 'ok' : 'failed', writable === 'yes' ? `${root} is a writable directory` : `${root} is not writable (${writable})`)
      if (!st?.isDirectory()) continue
      if (canFindMounts) {
        const real = await fs.realpath(root)
        await mountOf(ctx.$, real).then(
          (m) => add(`${label} mount`, m.target === real ? 'ok' : 'warning', m.target === real ? `${m.source} (${m.fstype})` : `not a mount point: lives on ${m.source} mounted at ${m.target}`),
          (err: Error) => add(`${label} mount`, 'warning', `could not tell: ${err.message.split('\n')[0]}`),
        )
      }
      const space = await fs.statfs(root)
      add(`${label} free`, 'ok', `${gib(space.bavail * space.bsize)} free of ${gib(space.blocks * space.bsize)}`)
    }

    if (ctx.settings.owner) {
      const spec = [ctx.settings.owner.user, ctx.settings.owner.group].filter(Boolean).join(':')
      await resolveOwner(ctx.$, ctx.settings.owner).then(
        (ids) => add('owner', 'ok', `${spec} = ${ids.uid}:${ids.gid}`),
        (err: Error) => add('owner', 'failed', `CITADEL_OWNER=${spec}: ${err.message}`),
      )
    }

    ctx.detail(...table([['CHECK', 'STATUS', 'DETAIL'], ...checks.map((c) => [c.check, c.status, c.detail])]))
    for (const c of checks.filter((c) => c.status === 'warning')) ctx.warn(`${c.check}: ${c.detail}`)
    const failed = checks.filter((c) => c.status === 'failed')
    if (failed.length) return ctx.fail(failed.map((c) => `${c.check}: ${c.detail}`).join('; '), { checks })
    const warnings = checks.length - checks.filter((c) => c.status === 'ok').length
    return ctx.finish(`${count(checks.length, 'check')}, ${count(warnings, 'warning')}`, { checks })
  },
})

export default task
runWhenMain(import.meta)
