// The run's lock and journal as another process, a kill or a damaged disk leaves them: a zombie holder,
// a lock or journal of an unexpected shape, temporary files of killed writers, read-only tasks beside a run.
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, describe, expect, it } from 'vitest'
import { setUpServer } from '../backup-helpers.ts'
import { citadel } from '../helpers.ts'

const children: ChildProcess[] = []
afterEach(() => {
  for (const child of children.splice(0)) child.kill('SIGKILL')
})

/** Fields of /proc/PID/stat after the command name: [0] state, [1] parent pid, [19] start time. */
const stat = (pid: number) => {
  const text = readFileSync(`/proc/${pid}/stat`, 'utf8')
  return text.slice(text.lastIndexOf(')') + 2).split(' ')
}

const lockFile = (app: string) => path.join(app, '.citadel', 'lock')

function writeLock(app: string, pid: number, procStart: string | null) {
  mkdirSync(path.join(app, '.citadel'), { recursive: true })
  writeFileSync(lockFile(app), JSON.stringify({ pid, command: 'citadel run weekly', started: '2026-01-01T00:00:00.000Z', procStart }) + '\n')
}

async function waitFor<T>(find: () => T | undefined, what: string): Promise<T> {
  for (let i = 0; i < 1000; i++) {
    const found = find()
    if (found !== undefined) return found
    await sleep(10)
  }
  throw new Error(`timed out waiting for ${what}`)
}

describe('the lock', () => {
  it('a holder that is a zombie (exited, never reaped) is dead: its lock is taken over', async () => {
    const roots = await setUpServer()
    // sh forks `sleep 0`, then becomes `sleep 30`, which never waits for it: the child stays a zombie.
    const parent = spawn('sh', ['-c', 'sleep 0 & exec sleep 30'], { stdio: 'ignore' })
    children.push(parent)
    const zombie = await waitFor(() => readdirSync('/proc').filter((n) => /^\d+$/.test(n)).map(Number).find((pid) => {
      try {
        return stat(pid)[1] === String(parent.pid) && stat(pid)[0] === 'Z'
      } catch {
        return false
      }
    }), 'the zombie')
    writeLock(roots.app, zombie, stat(zombie)[19]!)

    const run = await citadel(['task', 'create-dirs'], roots.env)
    expect(run.code, run.stderr).toBe(0)
    expect(run.stderr).toContain(`took over a stale lock of pid ${zombie} (citadel run weekly`)
    expect(existsSync(lockFile(roots.app))).toBe(false)
  })

  it('backup status and verify-symlinks answer while another run holds the lock; a task that changes things is refused', async () => {
    const roots = await setUpServer()
    const holder = spawn('sleep', ['30'], { stdio: 'ignore' })
    children.push(holder)
    await waitFor(() => (existsSync(`/proc/${holder.pid}/stat`) ? true : undefined), 'the holder')
    writeLock(roots.app, holder.pid!, stat(holder.pid!)[19]!)

    const status = await citadel(['backup', 'status'], roots.env)
    expect(status.code, status.stderr).toBe(0)
    const links = await citadel(['task', 'verify-symlinks'], roots.env)
    expect(links.code, links.stderr).toBe(0)
    const refused = await citadel(['task', 'create-dirs'], roots.env)
    expect(refused.code).toBe(3)
    expect(refused.stderr).toContain(`pid ${holder.pid} (citadel run weekly)`)
  })

  it('a lock file of another shape is one line naming it, and nothing runs; an empty one is taken over', async () => {
    const roots = await setUpServer()
    mkdirSync(path.join(roots.app, '.citadel'), { recursive: true })
    writeFileSync(lockFile(roots.app), '{"pid":"1234"}\n')
    const refused = await citadel(['task', 'create-dirs'], roots.env)
    expect(refused.code).toBe(3)
    expect(refused.stderr.trim().split('\n')).toEqual([
      `citadel: the lock file ${lockFile(roots.app)} is not a citadel lock (expected pid, command, started and procStart: pid: Invalid input: expected number, received string; command: Invalid input: expected string, received undefined; started: Invalid input: expected string, received undefined; procStart: Invalid input: expected string, received undefined): if no citadel runs on this app root, move it away and rerun`,
    ])
    expect(readFileSync(lockFile(roots.app), 'utf8')).toBe('{"pid":"1234"}\n')

    writeFileSync(lockFile(roots.app), '')
    const taken = await citadel(['task', 'create-dirs'], roots.env)
    expect(taken.code, taken.stderr).toBe(0)
    expect(existsSync(lockFile(roots.app))).toBe(false)
  })
})

describe('the journal', () => {
  it('an entry citadel does not know stops the run before anything is undone, naming the file and line', async () => {
    const roots = await setUpServer()
    const journal = path.join(roots.app, '.citadel', 'journal.jsonl')
    const link = path.join(roots.app, 'staging')
    const lines = [
      { run: 'r', task: 'repair-symlinks', undo: { op: 'remove-link', path: link } },
      { run: 'r', task: 'future-task', undo: { op: 'remove-tree', path: roots.models } },
    ].map((e) => JSON.stringify(e) + '\n').join('')
    mkdirSync(path.dirname(journal), { recursive: true })
    writeFileSync(journal, lines)

    const run = await citadel(['task', 'create-dirs'], roots.env)
    expect(run.code).toBe(2)
    expect(run.stderr).toContain(`cannot roll back ${journal}: line 2 is not a change citadel knows how to undo (undo.op: `)
    expect(run.stderr).toContain('nothing was undone and nothing else runs')
    expect(run.stderr).not.toContain('rolled back')
    expect(readlinkSync(link)).toBe(path.join(roots.models, 'staging'))
    expect(readFileSync(journal, 'utf8')).toBe(lines)
  })

  it('a line cut short by a kill is skipped only when it is the last one', async () => {
    const roots = await setUpServer()
    const journal = path.join(roots.app, '.citadel', 'journal.jsonl')
    const link = path.join(roots.app, 'staging')
    const entry = JSON.stringify({ run: 'r', task: 'repair-symlinks', undo: { op: 'remove-link', path: link } })
    mkdirSync(path.dirname(journal), { recursive: true })
    writeFileSync(journal, `{"run":"r","task":"repair-sym\n${entry}\n`)
    const damaged = await citadel(['task', 'create-dirs'], roots.env)
    expect(damaged.code).toBe(2)
    expect(damaged.stderr).toContain(`cannot roll back ${journal}: line 1 is not JSON`)
    expect(readlinkSync(link)).toBe(path.join(roots.models, 'staging'))

    writeFileSync(journal, `${entry}\n{"run":"r","task":"repair-sym`)
    const killed = await citadel(['task', 'create-dirs'], roots.env)
    expect(killed.code, killed.stderr).toBe(0)
    expect(killed.stderr).toContain('rolled back 1 of 1 changes left by an interrupted run')
    expect(existsSync(link)).toBe(false)
  })
})

describe('temporary files of killed writers', () => {
  it('the next run removes those in state/ whose writer is gone, and leaves a live writer\'s and anything else', async () => {
    const roots = await setUpServer()
    const state = path.join(roots.app, 'state')
    // 4194305 is above the kernel's pid_max: that writer cannot be alive.
    const dead = path.join(state, '.health.json.citadel-write-4194305-0badf00d')
    const live = path.join(state, `.health.json.citadel-write-${process.pid}-cafebabe`)
    const mine = path.join(state, '.health.json.citadel-write-notes')
    for (const file of [dead, live, mine]) writeFileSync(file, '{"partial":')

    const run = await citadel(['task', 'health-report'], roots.env)
    expect(run.code, run.stderr).toBe(0)
    expect(existsSync(dead)).toBe(false)
    expect(existsSync(live)).toBe(true)
    expect(existsSync(mine)).toBe(true)
  })
})
