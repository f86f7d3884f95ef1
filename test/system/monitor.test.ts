// The monitor for real: the citadel command in a child process on temporary roots, alerts through a real
// alert command, links broken under it, a tmpfs filled under it (as root), promtool on its metrics.
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, describe, expect, it } from 'vitest'
import type { Problem } from '../../lib/core/problems.ts'
import { Tracker } from '../../lib/monitor/monitor.ts'
import { backUp, setUpServer } from '../backup-helpers.ts'
import { citadel, makeRoots, setUp, start, type Roots } from '../helpers.ts'

const asRoot = process.getuid?.() === 0
const promtool = spawnSync('promtool', ['--version']).status === 0
/** High thresholds keep the verdicts independent of how full this machine's own disk is. */
// No registered model: one that is not there is a warning of its own (vLLM cannot load it).
const CALM = { STORAGE_MONITOR_DISK_USAGE_WARNING: '0.98', STORAGE_MONITOR_DISK_USAGE_CRITICAL: '0.99', STORAGE_MONITOR_INODE_USAGE_WARNING: '0.98', STORAGE_MONITOR_INODE_USAGE_CRITICAL: '0.99', MODEL_REGISTRY: '' }

const cleanups: (() => void)[] = []
afterEach(() => {
  for (const clean of cleanups.splice(0).reverse()) clean()
})

const problem = (severity: Problem['severity'], key = 'filesystems:/m:disk'): Problem => ({ check: 'filesystems', severity, key, message: `${severity} on ${key}` })

describe('Tracker: alerts on confirmed changes only', () => {
  it('one alert for a problem that holds, none for a one-sample blip, one recovery', () => {
    const tracker = new Tracker(2)
    const t = new Date('2026-11-29T00:00:00Z')
    const kinds = (problems: Problem[]) => tracker.observe(problems, t).map((a) => `${a.kind} ${a.previous}->${a.severity}`)
    expect(kinds([problem('warning')])).toEqual([])
    expect(kinds([])).toEqual([])
    expect(kinds([problem('warning')])).toEqual([])
    expect(kinds([problem('warning')])).toEqual(['problem ok->warning'])
    expect(kinds([problem('warning')])).toEqual([])
    expect(kinds([problem('critical')])).toEqual([])
    expect(kinds([problem('critical')])).toEqual(['worse warning->critical'])
    expect(kinds([problem('warning')])).toEqual([])
    expect(kinds([problem('warning')])).toEqual(['better critical->warning'])
    expect(kinds([])).toEqual([])
    expect(kinds([])).toEqual(['recovery warning->ok'])
    expect(kinds([])).toEqual([])
    expect(tracker.conditions()).toEqual({})
  })

  it('restored conditions are not alerted again; their recovery is', () => {
    const tracker = new Tracker(1, { 'filesystems:/m:disk': { check: 'filesystems', severity: 'warning', since: '2026-11-28T00:00:00Z', message: 'was full' } })
    expect(tracker.observe([problem('warning')], new Date())).toEqual([])
    const [recovery] = tracker.observe([], new Date())
    expect(recovery).toMatchObject({ kind: 'recovery', severity: 'ok', previous: 'warning', key: 'filesystems:/m:disk' })
    expect(recovery!.message).toBe('ok again after warning since 2026-11-28T00:00:00Z: warning on filesystems:/m:disk')
  })
})

/** Starts `citadel monitor` on roots; stops it with SIGTERM after the test. */
function monitor(roots: Roots, args: string[] = ['--interval', '1']) {
  const run = start(['monitor', ...args], roots.env)
  cleanups.push(() => run.child.kill('SIGKILL'))
  return run
}

const logEvents = (roots: Roots, event: string) => {
  const dir = path.join(roots.app, 'logs')
  return readdirSync(dir).filter((f) => f.startsWith('storage_')).flatMap((f) => readFileSync(path.join(dir, f), 'utf8').split('\n').slice(0, -1))
    .map((l) => JSON.parse(l)).filter((e) => e.event === event)
}

async function until<T>(what: string, probe: () => T | undefined | false | 0 | null, seconds = 20): Promise<T> {
  for (let waited = 0; waited < seconds * 10; waited++) {
    const value = probe()
    if (value) return value as T
    await sleep(100)
  }
  throw new Error(`timed out after ${seconds} s waiting for ${what}`)
}

const healthOf = (roots: Roots) => JSON.parse(readFileSync(path.join(roots.app, 'state', 'health.json'), 'utf8'))
const monitorStateOf = (roots: Roots) => JSON.parse(readFileSync(path.join(roots.app, 'state', 'monitor.json'), 'utf8'))
/** When the monitor's last cycle ended, from the monitor's own state file. */
const cycleCount = (roots: Roots): string | null =>
  existsSync(path.join(roots.app, 'state', 'monitor.json')) ? monitorStateOf(roots).last_cycle_at : null

describe('citadel monitor', () => {
  it('--once writes health.json and a Prometheus textfile promtool accepts, and exits as health-check does', async (ctx) => {
    const roots = await setUpServer(CALM)
    const none = await citadel(['monitor', '--once'], roots.env)
    expect(none.code, none.stderr).toBe(2)
    expect(none.stdout).toContain('no complete backup')
    await backUp(roots, { 'm/a.bin': 'a' })
    const once = await citadel(['monitor', '--once'], roots.env)
    expect(once.code, once.stdout + once.stderr).toBe(0)
    const health = healthOf(roots)
    expect(health.overall).toBe('ok')
    // health.json has one shape whoever writes it; the monitor's own state is in monitor.json.
    await citadel(['task', 'health-report'], roots.env)
    expect(Object.keys(healthOf(roots)).sort()).toEqual(Object.keys(health).sort())
    expect(health.monitor).toBeUndefined()
    const state = monitorStateOf(roots)
    expect(state.pid).toBeGreaterThan(0)
    expect(Date.parse(state.last_cycle_at)).toBeGreaterThanOrEqual(Date.parse(health.generated_at))
    expect(state.smart.read_at).toBe(health.smart_read_at)
    const prom = readFileSync(path.join(roots.app, 'metrics', 'citadel.prom'), 'utf8')
    expect(prom).toContain('citadel_health_severity{check="overall"} 0')
    expect(prom).toMatch(/citadel_backup_newest_age_seconds \d+/)
    expect(prom).toContain(`citadel_symlink_verdict{path="${path.join(roots.app, 'models')}",verdict="ok"} 1`)
    expect(readdirSync(path.join(roots.app, 'metrics'))).toEqual(['citadel.prom'])
    if (!promtool) return ctx.skip('promtool is not installed (Debian package prometheus): the textfile was written but not linted')
    const lint = spawnSync('promtool', ['check', 'metrics'], { input: prom, encoding: 'utf8' })
    expect(lint.stdout + lint.stderr).toBe('')
    expect(lint.status).toBe(0)
  })

  it('removes the temporary metrics file a killed monitor left, and nothing else in that directory', async () => {
    const roots = await setUpServer(CALM)
    const metrics = path.join(roots.app, 'metrics')
    const leftover = path.join(metrics, '.citadel.prom.citadel-write-4242-0badf00d')
    const operators = path.join(metrics, 'node-other.prom')
    writeFileSync(leftover, 'half a file')
    writeFileSync(operators, 'mine 1\n')
    await citadel(['monitor', '--once'], roots.env)
    expect(readdirSync(metrics).sort()).toEqual(['citadel.prom', 'node-other.prom'])
  })

  it('repairs a broken link once, logs it, and alerts instead of looping when a repair does not hold', async () => {
    const roots = await setUpServer(CALM)
    await backUp(roots, { 'm/a.bin': 'a' })
    const run = monitor(roots)
    await until('the first cycle', () => cycleCount(roots))
    const models = path.join(roots.app, 'models')
    unlinkSync(models)
    const [repair] = await until('a repair in the log', () => logEvents(roots, 'repair').length && logEvents(roots, 'repair'))
    expect(repair).toMatchObject({ path: models, was: 'missing', ok: true, now: 'ok' })
    expect(readFileSync(path.join(models, '..', 'models', 'm', 'a.bin'), 'utf8')).toBe('a')
    const generated = cycleCount(roots)
    await until('two more cycles', () => cycleCount(roots) !== generated && healthOf(roots).symlinks.every((l: any) => !l.failing))
    expect(logEvents(roots, 'repair')).toHaveLength(1)
    expect(logEvents(roots, 'alert')).toEqual([])
    run.child.kill('SIGTERM')
    const done = await run.done
    expect(done.code, done.stderr).toBe(0)
    expect(done.stderr).toContain(`repaired ${models} (was missing`)
  })

  it('a failing alert command is logged and the loop goes on', async () => {
    const roots = await setUpServer({ ...CALM, STORAGE_MONITOR_CONSECUTIVE: '1', STORAGE_MONITOR_ALERT_COMMAND: 'cat >/dev/null; echo mail server down >&2; exit 7' })
    const run = monitor(roots)
    const [failed] = await until('the alert command to fail', () => logEvents(roots, 'alert-command-failed').length && logEvents(roots, 'alert-command-failed'))
    expect(failed).toMatchObject({ key: 'backups:none', why: 'exit 7' })
    const after = cycleCount(roots)
    await until('another cycle after the failure', () => cycleCount(roots) !== after)
    expect(logEvents(roots, 'alert')).toHaveLength(1)
    run.child.kill('SIGINT')
    const done = await run.done
    expect(done.code).toBe(0)
    expect(done.stderr).toContain('alert command failed (exit 7): mail server down; going on')
  })

  it('status sees the running monitor, and a second monitor on the same app root is refused', async () => {
    const roots = await setUpServer(CALM)
    const run = monitor(roots)
    await until('the first cycle', () => cycleCount(roots))
    const second = await citadel(['monitor', '--once'], roots.env)
    expect(second.code).toBe(3)
    expect(second.stderr).toContain(`a monitor is already running: pid ${run.child.pid}`)
    const status = await citadel(['status'], roots.env)
    expect(status.stdout).toMatch(new RegExp(`monitor  running, pid ${run.child.pid}, last cycle \\d+m ago`))
    run.child.kill('SIGTERM')
    expect((await run.done).code).toBe(0)
  })

  it('rejects a bad --interval with one line, as an UNKNOWN for --once', async () => {
    const roots = await setUpServer(CALM)
    const bad = await citadel(['monitor', '--interval', '0'], roots.env)
    expect(bad.code).toBe(4)
    expect(bad.stderr).toBe('citadel: --interval "0" is not valid: expected a whole number of seconds, at least 1\n')
    expect((await citadel(['monitor', '--once', '--interval', 'soon'], roots.env)).code).toBe(3)
  })
})

describe.skipIf(!asRoot)('citadel monitor on a real filling disk (root: mounts an 8 MiB tmpfs)', () => {
  it('crossing the usage warning and back gives exactly one alert and one recovery', async () => {
    const received = path.join(os.tmpdir(), `citadel-alerts-${process.pid}.jsonl`)
    cleanups.push(() => rmSync(received, { force: true }))
    const roots = makeRoots({ ...CALM, STORAGE_MONITOR_DISK_USAGE_WARNING: '0.5', STORAGE_MONITOR_DISK_USAGE_CRITICAL: '0.95', STORAGE_MONITOR_ALERT_COMMAND: `cat >> ${received}` })
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', roots.models])
    cleanups.push(() => execFileSync('umount', [roots.models]))
    await setUp(roots)
    await backUp(roots, { 'm/a.bin': 'a' })
    // Complete lines only: the alert command may be halfway through writing one.
    const alerts = () => (existsSync(received) ? readFileSync(received, 'utf8').split('\n').slice(0, -1).map((l) => JSON.parse(l)) : [])
    const cycles = async (n: number) => {
      for (let i = 0; i < n; i++) {
        const seen = cycleCount(roots)
        await until('a cycle', () => cycleCount(roots) !== seen)
      }
    }
    const run = monitor(roots)
    await until('the first cycle', () => cycleCount(roots))
    const filler = path.join(roots.models, 'filler.bin')
    writeFileSync(filler, Buffer.alloc(6 * 1024 * 1024, 1))
    const [alert] = await until('the warning', () => alerts().length && alerts())
    expect(alert).toMatchObject({ kind: 'problem', check: 'filesystems', severity: 'warning', previous: 'ok' })
    expect(alert.message).toContain('at or above the warning 50%')
    // 47% is under the warning but within its 5-point clearing margin: no recovery.
    writeFileSync(filler, Buffer.alloc(Math.round(0.47 * 8 * 1024 * 1024), 1))
    await cycles(3)
    expect(alerts()).toHaveLength(1)
    expect(healthOf(roots).problems[0].message).toContain('within 5 points')
    unlinkSync(filler)
    await until('the recovery', () => alerts().length === 2)
    expect(alerts()[1]).toMatchObject({ kind: 'recovery', severity: 'ok', previous: 'warning', key: alert.key })
    await cycles(3)
    expect(alerts()).toHaveLength(2)
    run.child.kill('SIGTERM')
    expect((await run.done).code).toBe(0)
  })
})

describe.skipIf(!asRoot || spawnSync('chattr', ['--version']).error !== undefined)('citadel monitor when a repair cannot hold (root: chattr +i)', () => {
  it('tries once, then alerts, and does not loop', async () => {
    const roots = await setUpServer({ ...CALM, MODEL_REGISTRY: 'mixtral=mixtral-8x7b-instruct', STORAGE_MONITOR_ALERT_COMMAND: `cat >> /dev/null` })
    await backUp(roots, { 'm/a.bin': 'a' })
    mkdirSync(path.join(roots.active, 'mixtral-8x7b-instruct'))
    const linksDir = path.join(roots.app, 'model-links')
    execFileSync('chattr', ['+i', linksDir])
    cleanups.push(() => execFileSync('chattr', ['-i', linksDir]))
    const run = monitor(roots)
    const [alert] = await until('the alert', () => logEvents(roots, 'alert').length && logEvents(roots, 'alert'))
    expect(alert).toMatchObject({ kind: 'problem', check: 'symlinks', severity: 'critical', key: `symlinks:${path.join(linksDir, 'mixtral')}` })
    await sleep(2500)
    expect(logEvents(roots, 'repair')).toEqual([expect.objectContaining({ path: path.join(linksDir, 'mixtral'), ok: false })])
    expect(logEvents(roots, 'alert')).toHaveLength(1)
    run.child.kill('SIGTERM')
    expect((await run.done).code).toBe(0)
  })
})
