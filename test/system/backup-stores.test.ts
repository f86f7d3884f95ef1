// The backup store on this host and the one over ssh are judged by one verify algorithm and one retention
// rule: the same damage in both copies of a backup gives the same problems, the same sample and the same
// verify state, and `citadel task remote-backup-NAME` is the task with --remote.
import { execFileSync } from 'node:child_process'
import { chmodSync, mkdirSync, readFileSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { backUp, setUpServer, storeOf } from '../backup-helpers.ts'
import { citadelJson, type Roots } from '../helpers.ts'
import { sshdMissing, startSshd } from '../ssh-helpers.ts'

/** The same damage in one copy of a backup: each kind of problem verify knows from the tree and the hashes. */
function damage(dir: string) {
  const data = path.join(dir, 'data')
  const file = (rel: string) => path.join(data, rel)
  chmodSync(file('a.bin'), 0o644)
  writeFileSync(file('a.bin'), 'alphA content')
  chmodSync(file('b.bin'), 0o644)
  truncateSync(file('b.bin'), 3)
  rmSync(file('c.bin'))
  writeFileSync(file('deep/stray.bin'), 'not backed up')
  rmSync(file('to-a'))
  symlinkSync('b.bin', file('to-a'))
  // Neither a file nor a link: a stray all the same.
  execFileSync('mkfifo', [file('deep/pipe')])
}

async function verifyOn(roots: Roots, ...args: string[]) {
  const result = await citadelJson(['backup', 'verify', '--sample', '1', ...args], roots.env)
  const task = result.doc.tasks[0]
  return { code: result.code, task, problems: task.data.verification.problems.map((p: { path: string; kind: string }) => [p.path, p.kind]) }
}

describe.skipIf(sshdMissing)('one verify algorithm for both stores', () => {
  it('finds the same problems in the same damage here and over ssh, and keeps the same verify state', async () => {
    const roots = await setUpServer()
    const remoteDir = path.join(roots.base, 'remote')
    mkdirSync(remoteDir)
    Object.assign(roots.env, (await startSshd(remoteDir)).env)
    mkdirSync(path.join(roots.active, 'deep'), { recursive: true })
    symlinkSync('a.bin', path.join(roots.active, 'to-a'))
    const name = await backUp(roots, { 'a.bin': 'alpha content', 'b.bin': 'bravo content', 'c.bin': 'charlie', 'deep/d.bin': 'delta', 'empty.bin': '' })
    // The alias is the task with --remote, under its own name.
    const sent = await citadelJson(['task', 'remote-backup-create'], roots.env)
    expect(sent.code, sent.stdout + sent.stderr).toBe(0)
    expect(sent.doc.tasks[0]).toMatchObject({ name: 'remote-backup-create', status: 'changed', data: { backup: name, sent: true } })

    const here = path.join(storeOf(roots), name)
    const there = path.join(remoteDir, 'models', name)
    for (const dir of [here, there]) damage(dir)
    const local = await verifyOn(roots)
    const remote = await verifyOn(roots, '--remote')
    expect([local.code, remote.code]).toEqual([2, 2])
    const expected = [['a.bin', 'mismatch'], ['b.bin', 'size'], ['c.bin', 'missing'], ['deep/pipe', 'extra'], ['deep/stray.bin', 'extra'], ['to-a', 'link']]
    expect(local.problems).toEqual(expected)
    expect(remote.problems).toEqual(expected)
    const detail = (v: typeof local, rel: string) => v.task.data.verification.problems.find((p: { path: string }) => p.path === rel).detail
    for (const rel of ['b.bin', 'c.bin', 'deep/pipe', 'deep/stray.bin', 'to-a']) expect(detail(remote, rel), rel).toBe(detail(local, rel))
    expect(remote.task.data.sampled).toEqual(local.task.data.sampled)
    expect(remote.task.data.verification).toMatchObject({ files_checked: 5, files_hashed: 4, bytes_hashed: local.task.data.verification.bytes_hashed })
    const state = (dir: string) => Object.keys(JSON.parse(readFileSync(path.join(dir, 'verify-state.json'), 'utf8'))).sort()
    expect(state(there)).toEqual(state(here))
    expect(state(here)).toEqual(['deep/d.bin', 'empty.bin'])
  }, 90_000)
})
