// install-services, start-monitor and the services part of status, through the real command on temporary
// roots. systemd's own code judges the units: `systemd-analyze verify`, and the unit loader of systemd itself
// (`systemd --test --system`, which parses the files and dumps every unit as the manager holds it, without
// starting anything) shows that the paths and users it read are the real ones, hostile characters included.
import { spawnSync } from 'node:child_process'
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { loadSettings } from '../../lib/infra/config.ts'
import { renderUnits, systemdRunning, UNIT_FILES, UnitError, writablePaths } from '../../lib/systemd/units.ts'
import { citadel, citadelJson, makeRoots, PROJECT, snapshot, type Roots } from '../helpers.ts'

const onPath = (name: string) => (process.env.PATH ?? '').split(':').map((d) => path.join(d, name)).find((p) => existsSync(p)) ?? null
const ANALYZE = onPath('systemd-analyze')
const SYSTEMD = ['/usr/lib/systemd/systemd', '/lib/systemd/systemd'].find((p) => existsSync(p)) ?? null
const asRoot = process.getuid?.() === 0
/** On a machine systemd runs, install-services would reload and enable: these tests are for the other case. */
const BOOTED = systemdRunning()
const NO_ANALYZE = 'systemd-analyze is not installed (Debian package systemd): the units cannot be verified'

const unitDir = (roots: Roots) => roots.env.CITADEL_SYSTEMD_DIR!
const unitPaths = (dir: string) => UNIT_FILES.map((name) => path.join(dir, name))

/** `systemd-analyze verify` on all the units at once; its complaints, apart from the one about the user nobody. */
function verify(dir: string): { code: number | null; complaints: string[] } {
  const out = spawnSync(ANALYZE!, ['verify', ...unitPaths(dir)], { encoding: 'utf8', env: { PATH: process.env.PATH!, SYSTEMD_LOG_COLOR: '0' } })
  const complaints = `${out.stdout}${out.stderr}`.split('\n').filter((l) => l.trim() !== '' && !/Special user nobody configured/.test(l))
  return { code: out.status, complaints }
}

/**
 * The unit `name` as systemd's loader parsed it from `dir`: "Key: value" lines of `systemd --test` (which
 * refuses to run as root, so it runs as nobody), each key with all its values; the command line as "ExecStart".
 */
function parsedUnit(dir: string, name: string): Record<string, string[]> {
  const args = ['--test', '--system', `--unit=${name}`, '--no-pager']
  const [cmd, argv] = asRoot ? ['setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', SYSTEMD!, ...args]] : [SYSTEMD!, args]
  const out = spawnSync(cmd, argv, { encoding: 'utf8', env: { PATH: process.env.PATH!, HOME: '/nonexistent', SYSTEMD_UNIT_PATH: `${dir}:` } })
  const lines = out.stdout.split('\n')
  const start = lines.indexOf(`\t-> Unit ${name}:`)
  if (start < 0) throw new Error(`systemd --test did not dump ${name} (exit ${out.status}):\n${out.stderr}`)
  const fields: Record<string, string[]> = {}
  let inExecStart = false
  for (const line of lines.slice(start + 1)) {
    if (line.startsWith('\t-> Unit ')) break
    if (/^\t\t-> /.test(line)) inExecStart = line === '\t\t-> ExecStart:'
    const m = /^\t\t\t?([^:]+): (.*)$/.exec(line)
    if (!m) continue
    const key = m[1] === 'Command Line' ? (inExecStart ? 'ExecStart' : 'other command') : m[1]!
    ;(fields[key] ??= []).push(m[2]!)
  }
  return fields
}

/**
 * The argv a dumped command line stands for: words, "..." with backslash escapes as the dump prints them,
 * then $$ as $, the expansion systemd.service(5) describes at exec time ("To pass a literal dollar sign, use $$").
 */
function argvOf(commandLine: string): string[] {
  const words: string[] = []
  for (const m of commandLine.matchAll(/"((?:[^"\\]|\\.)*)"|(\S+)/g)) words.push(m[1] !== undefined ? m[1].replace(/\\(.)/g, '$1') : m[2]!)
  return words.map((w) => w.replaceAll('$$', '$'))
}

/** A name with every character systemd treats specially in some setting. */
const HOSTILE = `w -x %n %% $HOME \${X} $$ "dq" 'sq' back\\slash ; é`

describe.skipIf(BOOTED)(`citadel run install-services${BOOTED ? ' (skipped: systemd runs this machine, so the task would reload and enable units)' : ''}`, () => {
  it('writes five units systemd-analyze accepts, says systemd is not running, and changes nothing the second time', async (ctx) => {
    for (const owner of [undefined, 'nobody:nogroup']) {
      const roots = makeRoots(owner ? { CITADEL_OWNER: owner } : {})
      const first = await citadelJson(['run', 'install-services'], roots.env)
      expect(first.code, first.stderr).toBe(0)
      const [written, enabled] = first.doc.tasks
      expect(written).toMatchObject({ name: 'write-units', status: 'changed', msg: `5 of 5 units written to ${unitDir(roots)}` })
      expect(enabled).toMatchObject({ name: 'enable-services', status: 'skipped', msg: 'systemd is not running: nothing enabled', changes: [] })
      expect(enabled.warnings.join('\n')).toMatch(/systemd is not running here.*`citadel monitor`/)
      expect(readdirSync(unitDir(roots)).sort()).toEqual([...UNIT_FILES].sort())
      for (const file of unitPaths(unitDir(roots))) expect((statSync(file).mode & 0o777).toString(8), file).toBe('644')
      const monitor = readFileSync(path.join(unitDir(roots), 'citadel-monitor.service'), 'utf8')
      expect(monitor).toContain(`ExecStart=${process.execPath} ${path.join(PROJECT, 'bin', 'citadel.js')} monitor\n`)
      expect(monitor).toContain(`WorkingDirectory=${PROJECT}\n`)
      expect(monitor).toContain(`Environment=CITADEL_ENV_FILE=${roots.env.CITADEL_ENV_FILE}\n`)
      expect(monitor).toContain(owner ? 'User=nobody\nGroup=nogroup\n' : 'CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE')
      if (owner) expect(monitor).toContain('AmbientCapabilities=CAP_SYS_RAWIO CAP_SYS_ADMIN\n')
      const timer = readFileSync(path.join(unitDir(roots), 'citadel-weekly.timer'), 'utf8')
      expect(timer).toContain('OnCalendar=Sun *-*-* 04:00:00\nRandomizedDelaySec=1800\nPersistent=true\n')

      const second = await citadelJson(['run', 'install-services'], roots.env)
      expect(second.doc.tasks[0]).toMatchObject({ status: 'ok', changes: [], msg: `5 units up to date in ${unitDir(roots)}` })
      expect(second.doc.tasks[1]).toMatchObject({ status: 'skipped', changes: [] })

      if (ANALYZE) expect(verify(unitDir(roots))).toEqual({ code: 0, complaints: [] })
    }
    if (!ANALYZE) ctx.skip(NO_ANALYZE)
  })

  it('puts hostile root, env file and metrics paths into the units so that systemd reads them back unchanged', async (ctx) => {
    const roots = makeRoots()
    chmodSync(roots.base, 0o755) // systemd --test runs as nobody
    const dir = (name: string) => {
      mkdirSync(path.join(roots.base, name), { recursive: true })
      return path.join(roots.base, name)
    }
    const envFile = path.join(dir(`etc ${HOSTILE}`), `citadel ${HOSTILE}.env`)
    writeFileSync(envFile, '')
    const env = {
      ...roots.env,
      CITADEL_ENV_FILE: envFile,
      CITADEL_APP_ROOT: path.join(roots.base, `app ${HOSTILE}`),
      CITADEL_MODELS_ROOT: dir(`-models ${HOSTILE} `),
      CITADEL_BACKUP_ROOT: dir(`backup ${HOSTILE}`),
      CITADEL_OWNER: 'nobody:nogroup',
      STORAGE_MONITOR_PROMETHEUS_FILE: path.join(roots.base, `metrics ${HOSTILE}`, 'citadel.prom'),
    }
    const result = await citadelJson(['task', 'write-units'], env)
    expect(result.code, result.stderr).toBe(0)
    expect(result.doc.tasks[0].status).toBe('changed')
    if (!ANALYZE) return ctx.skip(NO_ANALYZE)
    expect(verify(unitDir(roots))).toEqual({ code: 0, complaints: [] })
    if (!SYSTEMD) return ctx.skip('systemd is not installed: its loader cannot show what it parsed')

    const writable = writablePaths(loadSettings(env))
    expect(writable).toEqual([env.CITADEL_APP_ROOT, env.CITADEL_MODELS_ROOT, env.CITADEL_BACKUP_ROOT, path.dirname(env.STORAGE_MONITOR_PROMETHEUS_FILE)])
    const monitor = parsedUnit(unitDir(roots), 'citadel-monitor.service')
    expect(monitor['Unit Load State']).toEqual(['loaded'])
    expect(argvOf(monitor.ExecStart![0]!)).toEqual([process.execPath, path.join(PROJECT, 'bin', 'citadel.js'), 'monitor'])
    expect(monitor.WorkingDirectory).toEqual([PROJECT])
    expect(monitor.User).toEqual(['nobody'])
    expect(monitor.Group).toEqual(['nogroup'])
    expect(monitor.ReadWritePaths).toEqual([writable.map((p) => `-${p}`).join(' ')])
    // Every setting this run took from the environment, and the env file, reach the service as they are.
    const carried = ['CITADEL_ENV_FILE', 'CITADEL_APP_ROOT', 'CITADEL_MODELS_ROOT', 'CITADEL_BACKUP_ROOT', 'CITADEL_OWNER', 'STORAGE_MONITOR_PROMETHEUS_FILE', 'CITADEL_SYSTEMD_DIR']
    expect([...monitor.Environment!].sort()).toEqual(carried.map((name) => `${name}=${env[name as keyof typeof env]}`).sort())
    for (const playbook of ['daily', 'weekly']) {
      const service = parsedUnit(unitDir(roots), `citadel-${playbook}.service`)
      expect(argvOf(service.ExecStart![0]!)).toEqual([process.execPath, path.join(PROJECT, 'bin', 'citadel.js'), 'run', playbook])
      expect(service.Environment).toEqual(monitor.Environment)
    }
  })

  it('escapes a hostile node path and checkout (program, argv and WorkingDirectory) and refuses what systemd cannot hold', async (ctx) => {
    const roots = makeRoots()
    chmodSync(roots.base, 0o755)
    const checkout = path.join(roots.base, `checkout ${HOSTILE}`)
    mkdirSync(path.join(checkout, 'bin'), { recursive: true })
    writeFileSync(path.join(checkout, 'bin', 'citadel.js'), '')
    // systemd refuses quotes and backslashes in the program it runs; everything else goes.
    const nodeDir = path.join(roots.base, `node -dir %i %% $USER \${X} ; é`)
    mkdirSync(nodeDir)
    const node = path.join(nodeDir, 'node')
    copyFileSync('/bin/true', node) // verify checks that the program exists and is executable
    chmodSync(node, 0o755)
    const settings = loadSettings(roots.env)
    const dir = path.join(roots.base, 'units')
    mkdirSync(dir)
    for (const unit of renderUnits({ settings, env: roots.env, node, root: checkout })) writeFileSync(path.join(dir, unit.name), unit.content)

    for (const bad of ['/opt/no"de/node', "/opt/no'de/node", '/opt/no\\de/node', '/opt/no\nde/node'])
      expect(() => renderUnits({ settings, env: roots.env, node: bad, root: checkout }), bad).toThrow(UnitError)
    for (const bad of [`${checkout}\n`, `${checkout}/x\\`, `${checkout}/trailing `])
      expect(() => renderUnits({ settings, env: roots.env, node, root: bad }), JSON.stringify(bad)).toThrow(UnitError)

    if (!ANALYZE) return ctx.skip(NO_ANALYZE)
    expect(verify(dir)).toEqual({ code: 0, complaints: [] })
    if (!SYSTEMD) return ctx.skip('systemd is not installed: its loader cannot show what it parsed')
    const monitor = parsedUnit(dir, 'citadel-monitor.service')
    // The dump shows argv; verify above found the program itself at its real path.
    expect(argvOf(monitor.ExecStart![0]!)).toEqual([node, path.join(checkout, 'bin', 'citadel.js'), 'monitor'])
    expect(monitor.WorkingDirectory).toEqual([checkout])
  })

  it('refuses a root with a newline, naming it, and writes nothing', async () => {
    const roots = makeRoots()
    const bad = path.join(roots.base, 'models\nExecStartPre=true')
    mkdirSync(bad)
    const result = await citadelJson(['task', 'write-units'], { ...roots.env, CITADEL_MODELS_ROOT: bad })
    expect(result.code).toBe(2)
    expect(result.doc.tasks[0].msg).toBe(`CITADEL_MODELS_ROOT ${JSON.stringify(bad)} contains a control character (a newline?), which a systemd unit cannot hold; nothing written`)
    expect(existsSync(unitDir(roots))).toBe(false)
  })

  it('in check mode writes nothing', async () => {
    const roots = makeRoots()
    const before = snapshot(roots.base)
    const result = await citadelJson(['task', 'write-units', '--check'], roots.env)
    expect(result.code, result.stderr).toBe(0)
    expect(result.doc.tasks[0]).toMatchObject({ status: 'changed', msg: `5 of 5 units would be written to ${unitDir(roots)}` })
    expect(result.doc.tasks[0].changes.map((c: any) => c.action)).toEqual(['create directory', ...UNIT_FILES.map(() => 'create file')])
    expect(snapshot(roots.base)).toEqual(before)
  })

  it.for([
    ['CITADEL_DAILY_SCHEDULE', 'bogus 25:00', "Failed to parse calendar specification 'bogus 25:00': Invalid argument"],
    ['CITADEL_WEEKLY_SCHEDULE', '2001-01-01 00:00:00', 'it never elapses'],
  ] as const)('a bad %s fails naming it and writes nothing, also over installed units', async ([name, value, why], ctx) => {
    if (!ANALYZE) return ctx.skip(NO_ANALYZE)
    const roots = makeRoots()
    const fresh = await citadelJson(['task', 'write-units'], { ...roots.env, [name]: value })
    expect(fresh.code).toBe(2)
    expect(fresh.doc.tasks[0].msg).toBe(`invalid setting ${name}=${JSON.stringify(value)}: ${why}; expected a systemd calendar expression such as *-*-* 03:00:00; nothing written`)
    expect(existsSync(unitDir(roots))).toBe(false)
    await citadelJson(['task', 'write-units'], roots.env)
    const installed = snapshot(unitDir(roots))
    const again = await citadelJson(['task', 'write-units', '--check'], { ...roots.env, [name]: value })
    expect(again.doc.tasks[0].status).toBe('failed')
    expect((await citadelJson(['task', 'write-units'], { ...roots.env, [name]: value })).code).toBe(2)
    expect(snapshot(unitDir(roots))).toEqual(installed)
  })

  it('rewrites a unit that drifted, and the playbook install-services runs the task', async () => {
    const roots = makeRoots()
    await citadelJson(['task', 'write-units'], roots.env)
    const timer = path.join(unitDir(roots), 'citadel-daily.timer')
    writeFileSync(timer, 'edited by hand\n')
    chmodSync(path.join(unitDir(roots), 'citadel-weekly.timer'), 0o600)
    const result = await citadelJson(['run', 'install-services'], { ...roots.env, CITADEL_DAILY_SCHEDULE: '*-*-* 02:30:00' })
    expect(result.code, result.stderr).toBe(0)
    expect(result.doc.playbook).toBe('install-services')
    expect(result.doc.tasks[0].changes.map((c: any) => [path.basename(c.path), c.action])).toEqual([
      ['citadel-monitor.service', 'update file'], // the services carry the new CITADEL_DAILY_SCHEDULE from the environment
      ['citadel-daily.service', 'update file'],
      ['citadel-daily.timer', 'update file'],
      ['citadel-weekly.service', 'update file'],
      ['citadel-weekly.timer', 'fix mode'],
    ])
    expect(readFileSync(timer, 'utf8')).toContain('OnCalendar=*-*-* 02:30:00\n')
    expect(statSync(path.join(unitDir(roots), 'citadel-weekly.timer')).mode & 0o777).toBe(0o644)
  })
})

describe.skipIf(BOOTED)(`citadel start-monitor and status without systemd${BOOTED ? ' (skipped: systemd runs this machine)' : ''}`, () => {
  it('start-monitor starts nothing, exits 5 and says how to run the monitor in the foreground', async () => {
    const roots = makeRoots()
    const result = await citadel(['start-monitor'], roots.env)
    expect(result.code).toBe(5)
    expect(result.stdout).toContain('systemd is not running here: nothing started. Run the monitor in the foreground with `citadel monitor`')
    expect(result.stdout).toContain('`citadel run install-services` installs')
    expect(result.stdout.trim().split('\n').length).toBeLessThanOrEqual(2)
    const help = await citadel(['start-monitor', '--help'], roots.env)
    expect(help.code).toBe(0)
    expect(help.stdout).toMatch(/^Usage: citadel start-monitor\n[\s\S]*5 nothing started/)
    expect((await citadel(['start-monitor', 'extra'], roots.env)).code).toBe(4)
    expect((await citadel(['start-monitor'], { ...roots.env, CITADEL_DIR_MODE: 'x' })).code).toBe(4)
  })

  it('status and status --json show the services section, installed or not, and change nothing', async () => {
    const roots = makeRoots()
    await citadelJson(['run', 'initial-setup'], roots.env)
    const before = snapshot(roots.base)
    const human = await citadel(['status'], roots.env)
    expect(human.code, human.stderr).toBe(0)
    expect(human.stdout).toContain('services systemd is not running; units not installed (citadel run install-services installs them)\n')
    const json = await citadelJson(['status'], roots.env)
    expect(json.doc.services).toEqual({ systemd: 'not running', dir: unitDir(roots), installed: [], missing: UNIT_FILES, monitor: null, timers: [], note: 'systemd is not running' })
    expect(snapshot(roots.base)).toEqual(before)

    await citadelJson(['task', 'write-units'], roots.env)
    expect((await citadel(['status'], roots.env)).stdout).toContain(`services systemd is not running; units installed in ${unitDir(roots)}, not enabled\n`)
    expect((await citadelJson(['status'], roots.env)).doc.services).toMatchObject({ installed: UNIT_FILES, missing: [] })
  })
})
