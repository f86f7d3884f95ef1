// Root marks and registered models, through the real command on real roots: an unmounted model disk (an
// empty mount point) and a swapped one (another ext4 filesystem with a copy of the mark) cost nothing.
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { backUp, setUpServer, storeOf } from '../backup-helpers.ts'
import { citadel, citadelJson, makeRoots, setUp, snapshot } from '../helpers.ts'

const CALM = { STORAGE_MONITOR_DISK_USAGE_WARNING: '0.98', STORAGE_MONITOR_DISK_USAGE_CRITICAL: '0.99', STORAGE_MONITOR_INODE_USAGE_WARNING: '0.98', STORAGE_MONITOR_INODE_USAGE_CRITICAL: '0.99', MODEL_REGISTRY: '' }
const MARK = '.citadel-root.json'

describe('an unmounted model disk', () => {
  it('daily creates nothing on the empty mount point, exits 2 naming CITADEL_MODELS_ROOT; health-check, status and the monitor say critical', async () => {
    const roots = await setUpServer(CALM)
    await backUp(roots, { 'm/weights.bin': 'the real model' })
    // After a reboot the disk is not mounted: an empty directory stands where it was.
    renameSync(roots.models, `${roots.models}-disk`)
    mkdirSync(roots.models)
    const models = snapshot(roots.models)
    const store = snapshot(storeOf(roots))

    const daily = await citadel(['run', 'daily'], roots.env)
    expect(daily.code, daily.stdout + daily.stderr).toBe(2)
    const line = `CITADEL_MODELS_ROOT ${roots.models} has no citadel mark, but it was marked `
    expect(daily.stdout).toContain(line)
    expect(daily.stdout).toContain(`is the disk mounted? check with findmnt ${roots.models}`)
    expect(snapshot(roots.models)).toEqual(models)
    expect(snapshot(storeOf(roots))).toEqual(store)

    const health = await citadelJson(['health-check'], roots.env)
    expect(health.code).toBe(2)
    expect(health.doc.problems).toContainEqual({ check: 'roots', severity: 'critical', key: 'roots:models', message: expect.stringContaining(line) })
    const status = await citadel(['status'], roots.env)
    expect(status.stdout).toContain('roots    models UNMARKED, backup marked')

    const monitor = await citadel(['monitor', '--once'], roots.env)
    expect(monitor.code).toBe(2)
    expect(monitor.stderr).not.toContain('repair')
    expect(snapshot(roots.models)).toEqual(models)
    const prom = readFileSync(path.join(roots.app, 'metrics', 'citadel.prom'), 'utf8')
    expect(prom).toContain(`citadel_root_marked{root="models",path="${roots.models}"} 0`)
    expect(prom).toContain(`citadel_root_marked{root="backup",path="${roots.backup}"} 1`)
    expect(prom).toContain('citadel_health_severity{check="roots"} 2')

    // Mounted again, everything is as it was.
    rmSync(roots.models, { recursive: true })
    renameSync(`${roots.models}-disk`, roots.models)
    const again = await citadel(['run', 'daily'], roots.env)
    expect(again.code, again.stdout).toBe(0)
  })

  it('initial-setup refuses the empty mount point too, and --new-disk lays out a replacement disk', async () => {
    const roots = await setUpServer(CALM)
    rmSync(roots.models, { recursive: true })
    mkdirSync(roots.models)
    const setup = await citadelJson(['run', 'initial-setup'], roots.env)
    expect(setup.code).toBe(2)
    expect(setup.doc.tasks.find((t: any) => t.name === 'mark-roots').msg).toMatch(/has no citadel mark, but it was marked .*--new-disk$/)
    expect(snapshot(roots.models)).toEqual({ '.': expect.any(String) })

    const remark = await citadelJson(['task', 'mark-roots', '--new-disk'], roots.env)
    expect(remark.code, remark.stdout).toBe(0)
    expect(remark.doc.tasks[0].warnings).toEqual([expect.stringMatching(new RegExp(`^marked ${roots.models} as a new disk in place of [0-9a-f-]+$`))])
    const laidOut = await citadel(['run', 'initial-setup'], roots.env)
    expect(laidOut.code, laidOut.stdout).toBe(0)
    expect(existsSync(roots.active)).toBe(true)
  })
})

describe('a server laid out before roots were marked', () => {
  const unmark = (roots: { models: string; backup: string; app: string }) => {
    for (const file of [path.join(roots.models, MARK), path.join(roots.backup, MARK), path.join(roots.app, '.citadel', 'roots.json')]) unlinkSync(file)
  }

  it('is refused until the next initial-setup marks its roots, saying so', async () => {
    const roots = await setUpServer(CALM)
    unmark(roots)
    const refused = await citadel(['task', 'repair-symlinks'], roots.env)
    expect(refused.code).toBe(2)
    expect(refused.stdout).toContain(`CITADEL_MODELS_ROOT ${roots.models} has no citadel mark (${MARK}): it was laid out before citadel marked its roots; run citadel run initial-setup to mark it`)

    const setup = await citadelJson(['run', 'initial-setup'], roots.env)
    expect(setup.code, setup.stdout).toBe(0)
    expect(setup.doc.tasks.find((t: any) => t.name === 'mark-roots').warnings).toEqual([
      `${roots.models} was laid out before citadel marked its roots: marked it now`,
      `${roots.backup} was laid out before citadel marked its roots: marked it now`,
    ])
    expect(JSON.parse(readFileSync(path.join(roots.models, MARK), 'utf8'))).toMatchObject({ format: 1, role: 'models' })
    expect((await citadel(['task', 'repair-symlinks'], roots.env)).code).toBe(0)
  })

  it('with its model disk not mounted at the upgrade, is not marked as a fresh server', async () => {
    const roots = await setUpServer(CALM)
    unmark(roots)
    rmSync(roots.models, { recursive: true })
    mkdirSync(roots.models)
    const setup = await citadelJson(['run', 'initial-setup'], roots.env)
    expect(setup.code).toBe(2)
    expect(setup.doc.tasks.find((t: any) => t.name === 'mark-roots').msg).toBe(`CITADEL_MODELS_ROOT ${roots.models} is empty, but ${roots.app} was set up before and links there: is the disk mounted? check with findmnt ${roots.models}; to lay out a new disk there, run citadel task mark-roots --new-disk`)
    expect(existsSync(path.join(roots.models, MARK))).toBe(false)
    expect(existsSync(path.join(roots.backup, MARK))).toBe(false)
  })
})

const asRoot = process.getuid?.() === 0
const mounted: string[] = []
afterEach(() => {
  for (const dir of mounted.splice(0).reverse()) execFileSync('umount', [dir])
})

function mountExt4(image: string, dir: string): string {
  execFileSync('truncate', ['-s', '8M', image])
  execFileSync('mkfs.ext4', ['-q', '-F', image])
  execFileSync('mount', ['-o', 'loop', image, dir])
  mounted.push(dir)
  return execFileSync('findmnt', ['-n', '-o', 'UUID', '--target', dir], { encoding: 'utf8' }).trim()
}

describe.skipIf(!asRoot)('a swapped model disk (needs root: mounts two loop ext4 images; skipped otherwise)', () => {
  it('another filesystem with a copy of the mark is refused and critical; --new-disk re-marks it', async () => {
    const roots = makeRoots(CALM)
    const first = mountExt4(path.join(roots.base, 'first.img'), roots.models)
    await setUp(roots)
    const mark = readFileSync(path.join(roots.models, MARK), 'utf8')
    expect(JSON.parse(mark).fs_uuid).toBe(first)
    execFileSync('umount', [mounted.pop()!])

    const second = mountExt4(path.join(roots.base, 'second.img'), roots.models)
    writeFileSync(path.join(roots.models, MARK), mark)
    mkdirSync(roots.active)
    const before = snapshot(roots.models)
    const refused = await citadel(['task', 'repair-symlinks'], roots.env)
    expect(refused.code).toBe(2)
    expect(refused.stdout).toContain(`CITADEL_MODELS_ROOT ${roots.models} is on filesystem ${second}, but mark ${JSON.parse(mark).id}`)
    expect(refused.stdout).toContain(`belongs to filesystem ${first}: another disk with a copy of the mark?`)
    expect(snapshot(roots.models)).toEqual(before)
    const health = await citadelJson(['health-check'], roots.env)
    expect(health.doc.problems.filter((p: any) => p.check === 'roots').map((p: any) => `${p.severity} ${p.key}`)).toEqual(['critical roots:models'])

    const remark = await citadel(['task', 'mark-roots', '--new-disk'], roots.env)
    expect(remark.code, remark.stdout).toBe(0)
    expect(JSON.parse(readFileSync(path.join(roots.models, MARK), 'utf8')).fs_uuid).toBe(second)
    expect((await citadel(['run', 'initial-setup'], roots.env)).code).toBe(0)
    const after = await citadelJson(['health-check'], roots.env)
    expect(after.doc.problems.filter((p: any) => p.check === 'roots')).toEqual([])
  })
})

describe('a registered model vLLM cannot load', () => {
  it('a model directory that is gone or replaced by a file is a warning in health-check, status and the metrics', async () => {
    const roots = makeRoots({ ...CALM, MODEL_REGISTRY: 'kept=kept-dir,gone=gone-dir,filed=filed-dir' })
    for (const dir of ['kept-dir', 'gone-dir', 'filed-dir']) mkdirSync(path.join(roots.models, 'active', dir), { recursive: true })
    await setUp(roots)
    await backUp(roots, { 'kept-dir/w.bin': 'w' })
    expect((await citadel(['health-check'], roots.env)).code).toBe(0)

    rmSync(path.join(roots.active, 'gone-dir'), { recursive: true })
    rmSync(path.join(roots.active, 'filed-dir'), { recursive: true })
    writeFileSync(path.join(roots.active, 'filed-dir'), 'not a model')
    const gone = `vLLM cannot load gone: ${path.join(roots.active, 'gone-dir')} is missing`
    const filed = `vLLM cannot load filed: ${path.join(roots.active, 'filed-dir')} is a file`
    const health = await citadel(['health-check'], roots.env)
    expect(health.code, health.stdout).toBe(1)
    expect(health.stdout).toBe(`CITADEL WARNING - 2 problems\nwarning  models      ${gone}\nwarning  models      ${filed}\n` + health.stdout.split('\n').filter((l) => l.startsWith('note')).map((l) => `${l}\n`).join(''))
    const status = await citadel(['status'], roots.env)
    expect(status.stdout).toContain(`  warning  ${gone}\n  warning  ${filed}`)
    await citadel(['monitor', '--once'], roots.env)
    const prom = readFileSync(path.join(roots.app, 'metrics', 'citadel.prom'), 'utf8')
    expect(prom).toContain(`citadel_model_loadable{model="gone",path="${path.join(roots.active, 'gone-dir')}"} 0`)
    expect(prom).toContain(`citadel_model_loadable{model="kept",path="${path.join(roots.active, 'kept-dir')}"} 1`)
    expect(prom).toContain('citadel_health_severity{check="models"} 1')
  })

  it('initial-setup on a fresh server skips a model not downloaded yet and succeeds, with the warning in its report', async () => {
    const roots = makeRoots({ MODEL_REGISTRY: 'later=later-dir' })
    const setup = await citadelJson(['run', 'initial-setup'], roots.env)
    expect(setup.code, setup.stdout).toBe(0)
    expect(setup.doc.tasks.find((t: any) => t.name === 'health-report').warnings).toContain(`warning: vLLM cannot load later: ${path.join(roots.active, 'later-dir')} is missing`)
  })
})

describe('files citadel wrote earlier are read through a schema', () => {
  it("a monitor's state or perf history line of another shape is one line naming the file", async () => {
    const roots = await setUpServer(CALM)
    const state = path.join(roots.app, 'state')
    writeFileSync(path.join(state, 'monitor.json'), JSON.stringify({ pid: 'not a pid' }))
    writeFileSync(path.join(state, 'perf-history.jsonl'), '{"path":"/x","at":"y","jobs":{}}\n')
    const status = await citadel(['status'], roots.env)
    expect(status.code).toBe(0)
    expect(status.stderr).toMatch(new RegExp(`^citadel: warning: ${path.join(state, 'monitor.json')} is not a monitor's state citadel wrote at pid: Invalid input: expected number, received string.*; status reads the disks itself\n$`))
    const health = await citadelJson(['health-check'], roots.env)
    expect(health.doc.problems).toContainEqual({ check: 'perf', severity: 'warning', key: 'perf:history', message: expect.stringMatching(new RegExp(`^${path.join(state, 'perf-history.jsonl')} line 1 is not a perf result citadel wrote at `)) })
  })
})
