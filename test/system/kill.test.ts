// A SIGKILL of citadel leaves nothing of its own running: the copy it started dies with it, so the next
// run, started at once, finds no one writing into what it cleans up.
import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, utimesSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, describe, expect, it } from 'vitest'
import { setUpServer, storeOf, writeFile } from '../backup-helpers.ts'
import { citadel, citadelJson, makeRoots, start } from '../helpers.ts'
import { sshdMissing, startSshd } from '../ssh-helpers.ts'

/**
 * pid → command line of every process that has to do with `dirs`: its command line names one of them, or
 * its working directory or an open file lies below one (the far side's rsync, whose paths came over ssh).
 */
const processesMentioning = (...dirs: string[]) => processesOf(dirs, () => true)

/**
 * Those of processesMentioning(dirs) whose command line is `wanted`: what a wait polls for, every few ms. Only
 * their open files are read, which keeps a poll cheap on a machine running hundreds of processes.
 */
function processesOf(dirs: string[], wanted: (cmd: string) => boolean): Map<number, string> {
  const found = new Map<number, string>()
  const below = (p: string) => dirs.some((d) => p === d || p.startsWith(d + '/'))
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue
    try {
      const cmdline = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').join(' ')
      if (!wanted(cmdline)) continue
      const open = () => [`/proc/${name}/cwd`, ...readdirSync(`/proc/${name}/fd`).map((fd) => `/proc/${name}/fd/${fd}`)].some((l) => {
        try {
          return below(readlinkSync(l))
        } catch {
          return false
        }
      })
      if (dirs.some((d) => cmdline.includes(d)) || open()) found.set(Number(name), cmdline)
    } catch {
      // gone meanwhile
    }
  }
  return found
}

/** Whether `pid` is still a process that runs (a zombie runs nothing). */
function running(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return false
  }
}

/** Starts `args`, waits until a process of it whose command line `matches` runs, then kills citadel. */
async function killDuring(args: string[], env: Record<string, string>, dirs: string[], matches: (cmd: string) => boolean) {
  // What ran already (the test's sshd) is not the victim's.
  const already = processesMentioning(...dirs)
  const victim = start(args, env)
  for (const until = Date.now() + 30_000; ; await sleep(5)) {
    if (processesOf(dirs, matches).size) break
    if (Date.now() > until) throw new Error(`the process to kill citadel during never started`)
  }
  await sleep(100)
  const before = processesMentioning(...dirs)
  victim.child.kill('SIGKILL')
  const ours = new Map([...before, ...processesMentioning(...dirs)])
  ours.delete(victim.child.pid!)
  for (const pid of already.keys()) ours.delete(pid)
  victims.push(...ours.keys())
  await victim.done
  return ours
}

const alive = (ours: Map<number, string>) => [...ours].filter(([pid]) => running(pid)).map(([pid, cmd]) => `${pid} ${cmd}`)

// What a failing test leaves running is killed before its temporary directory goes.
const victims: number[] = []
afterEach(async () => {
  const left = victims.splice(0).filter(running)
  for (const pid of left) process.kill(pid, 'SIGKILL')
  while (left.some(running)) await sleep(20)
})

/** Waits until rsync copies for a backup under `base` (up to `limit` ms), then a random moment more of its copy. */
async function untilCopying(base: string, limit: number): Promise<void> {
  const deadline = Date.now() + limit
  while (Date.now() < deadline && !processesOf([base], (c) => c.startsWith('rsync')).size) await sleep(5)
  await sleep(Math.random() * 30)
}

describe('a killed backup create', () => {
  it('killed in the middle of copying a big file: the copy dies with it and an immediate rerun succeeds', async () => {
    const roots = await setUpServer()
    writeFile(path.join(roots.active, 'big', 'weights.bin'), Buffer.alloc(384 << 20, 7))
    const ours = await killDuring(['backup', 'create'], roots.env, [roots.base], (c) => c.startsWith('rsync '))
    const rerun = start(['backup', 'create'], roots.env)
    await sleep(1000)
    expect(alive(ours)).toEqual([])
    const result = await rerun.done
    expect(result.code, result.stdout + result.stderr).toBe(0)
  }, 60_000)

  it('30 SIGKILLs at random moments, each followed at once by a rerun: every rerun succeeds, nothing of the killed run survives a second', async () => {
    const roots = await setUpServer()
    for (let i = 0; i < 6; i++) writeFile(path.join(roots.active, `model-${i}`, 'weights.bin'), randomBytes(8 << 20))
    const touchSource = () => {
      // A new mtime makes every file a changed one: each run copies all of them again.
      const when = new Date(Date.now() - Math.floor(Math.random() * 1e9))
      for (let i = 0; i < 6; i++) utimesSync(path.join(roots.active, `model-${i}`, 'weights.bin'), when, when)
    }
    const dropBackups = () => {
      for (const name of readdirSync(storeOf(roots))) if (name.startsWith('backup_')) rmSync(path.join(storeOf(roots), name), { recursive: true })
    }
    const t0 = Date.now()
    const first = await citadel(['backup', 'create'], roots.env)
    expect(first.code, first.stderr).toBe(0)
    const duration = Date.now() - t0

    const survivors: string[] = []
    const failures: string[] = []
    let midCopy = 0
    for (let trial = 0; trial < 30; trial++) {
      touchSource()
      const victim = start(['backup', 'create'], roots.env)
      // Every other kill lands at a random moment of the copy itself, which is a small share of a run on a fast
      // disk (or a loaded machine): the others, at any moment of the run.
      if (trial % 2 === 0) await sleep(Math.random() * duration)
      else await untilCopying(roots.base, duration)
      const before = processesMentioning(roots.base)
      victim.child.kill('SIGKILL')
      const after = processesMentioning(roots.base)
      const ours = new Map([...before, ...after])
      ours.delete(victim.child.pid!)
      if ([...ours.values()].some((c) => c.startsWith('rsync'))) midCopy++
      // Reaped (not a sleep): a dead parent's pid must not look alive to the rerun's lock check.
      await victim.done
      const rerun = start(['backup', 'create'], roots.env)
      await sleep(1000)
      victims.push(...ours.keys())
      for (const [pid, cmd] of ours) if (running(pid)) survivors.push(`trial ${trial}: pid ${pid} ${cmd}`)
      const result = await rerun.done
      if (result.code !== 0) failures.push(`trial ${trial}: exit ${result.code}: ${result.stdout} ${result.stderr}`)
      dropBackups()
    }
    expect(survivors).toEqual([])
    expect(failures).toEqual([])
    // The kills must have hit the copy itself, or the test proves nothing.
    expect(midCopy).toBeGreaterThan(3)
    // Sixty runs and thirty seconds of waits: started among the other long files (longest first), it gets a
    // share of two cores; a timeout only ends a hung test.
  }, 360_000)
})

describe.skipIf(sshdMissing)(`a killed send to the remote store${sshdMissing ? ` (${sshdMissing})` : ''}`, () => {
  it('rsync, its ssh and the far side die with citadel', async () => {
    const roots = await setUpServer()
    const remoteDir = path.join(roots.base, 'remote')
    mkdirSync(remoteDir)
    Object.assign(roots.env, (await startSshd(remoteDir)).env)
    writeFile(path.join(roots.active, 'big', 'weights.bin'), Buffer.alloc(384 << 20, 7))
    expect((await citadel(['backup', 'create'], roots.env)).code).toBe(0)
    // ssh names its key, kept beside the private sshd's own files; the far side's rsync writes below base.
    const dirs = [roots.base, path.dirname(roots.env.BACKUP_SSH_IDENTITY!)]
    const ours = await killDuring(['backup', 'create', '--remote'], roots.env, dirs, (c) => c.startsWith('rsync --server'))
    expect([...ours.values()].filter((c) => /^(ssh|rsync) /.test(c)).length).toBeGreaterThanOrEqual(3)
    await sleep(1000)
    expect(alive(ours)).toEqual([])
  }, 60_000)
})

describe('what a killed run left', () => {
  it.runIf(process.getuid?.() === 0)('a partial that cannot be removed is never reported as removed (root: an immutable file in it)', async () => {
    const roots = await setUpServer()
    writeFile(path.join(roots.active, 'm', 'w.bin'), 'weights')
    const partial = path.join(storeOf(roots), 'backup_20261201_030000_full.partial')
    const stuck = path.join(partial, 'data', 'stuck.bin')
    writeFile(stuck, 'x')
    execFileSync('chattr', ['+i', stuck])
    try {
      const result = await citadelJson(['backup', 'create'], roots.env)
      expect(result.code).toBe(2)
      const task = result.doc.tasks[0]
      expect(task.warnings.join('\n')).not.toContain('removed it')
      expect(task.msg).toContain('backup_20261201_030000_full.partial was left by an interrupted backup or cleanup and could not be removed: ')
      expect(task.msg).toContain('remove it by hand if nothing writes into it any more')
    } finally {
      execFileSync('chattr', ['-i', stuck])
    }
  })

  it.runIf(process.getuid?.() === 0 && !sshdMissing)('nor is one on the remote store (root: an immutable file in it)', async () => {
    const roots = await setUpServer()
    const remoteDir = path.join(roots.base, 'remote')
    mkdirSync(remoteDir)
    Object.assign(roots.env, (await startSshd(remoteDir)).env)
    writeFile(path.join(roots.active, 'm', 'w.bin'), 'weights')
    expect((await citadel(['backup', 'create'], roots.env)).code).toBe(0)
    const stuck = path.join(remoteDir, 'models', 'backup_20261201_030000_full.partial', 'data', 'stuck.bin')
    writeFile(stuck, 'x')
    execFileSync('chattr', ['+i', stuck])
    try {
      const result = await citadelJson(['backup', 'create', '--remote'], roots.env)
      expect(result.code).toBe(2)
      const task = result.doc.tasks[0]
      expect(task.warnings.join('\n')).not.toContain('removed it')
      expect(task.msg).toMatch(/^backup_20261201_030000_full\.partial on .* was left by an interrupted send or cleanup and could not be removed: /)
    } finally {
      execFileSync('chattr', ['-i', stuck])
    }
  }, 60_000)
})

const haveFio = (process.env.PATH ?? '').split(':').some((d) => d && existsSync(path.join(d, 'fio')))

describe.skipIf(!haveFio)(`a killed perf run${haveFio ? '' : ' (skipped: fio is not installed)'}`, () => {
  it('fio dies with citadel', async () => {
    const roots = makeRoots()
    const dir = path.join(roots.base, 'disk')
    mkdirSync(dir)
    // The full test on the real disk: its first job, a 1 GiB write, would go on for seconds after the kill.
    const ours = await killDuring(['perf', dir], roots.env, [roots.base], (c) => c.startsWith('fio ') && !c.includes('--name=probe'))
    await sleep(1000)
    expect(alive(ours)).toEqual([])
  }, 60_000)
})
