// One ssh login per run: a weekly run that sends, publishes, verifies and cleans up on BACKUP_REMOTE goes
// through one master connection, which ends with the run, and a SIGKILL leaves nothing that stops the next.
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readdirSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { describe, expect, it } from 'vitest'
import { setUpServer, writeFile } from '../backup-helpers.ts'
import { citadel, citadelJson, start } from '../helpers.ts'
import { sshdMissing, startSshd } from '../ssh-helpers.ts'

/** The ssh masters (ssh -M) logging in with this identity file, by pid. */
function masters(identity: string): number[] {
  const out = execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' })
  return out.split('\n').filter((l) => / ssh .* -M /.test(` ${l.trim().replace(/^\d+\s+/, '')} `) && l.includes(identity)).map((l) => Number(l.trim().split(/\s+/)[0]))
}

const stateDirs = (app: string) => readdirSync(path.join(app, '.citadel')).filter((n) => /^ssh-\d+$/.test(n))

describe.skipIf(sshdMissing)(`the run's ssh connection${sshdMissing ? ` (${sshdMissing})` : ''}`, () => {
  it('logs in once for a whole weekly run, and leaves no master or socket behind', async () => {
    const roots = await setUpServer()
    const remoteDir = path.join(roots.base, 'remote')
    mkdirSync(remoteDir)
    const sshd = await startSshd(remoteDir)
    Object.assign(roots.env, sshd.env)
    writeFile(path.join(roots.active, 'm', 'w.bin'), 'weights')
    const run = await citadelJson(['run', 'weekly', '--skip-tags', 'perf'], roots.env)
    const steps = Object.fromEntries(run.doc.tasks.map((t: { name: string; status: string }) => [t.name, t.status]))
    expect(steps['remote-backup-create'], run.stdout).toBe('changed')
    expect(steps['remote-backup-verify'], run.stdout).toBe('ok')
    expect(steps['remote-backup-cleanup'], run.stdout).toMatch(/ok|changed/)
    // A scan, an rsync, a publish, a scan, lists, a listing, sha256sum -c, a record, a scan: one login.
    expect(sshd.logins()).toBe(1)
    expect(masters(roots.env.BACKUP_SSH_IDENTITY!)).toEqual([])
    expect(stateDirs(roots.app)).toEqual([])
    // Each run has its own connection.
    expect((await citadel(['backup', 'status', '--remote'], roots.env)).code).toBe(0)
    expect(sshd.logins()).toBe(2)
  }, 180_000)

  it('a SIGKILL takes the master with it, and the next run removes the socket directory it left', async () => {
    const roots = await setUpServer()
    const remoteDir = path.join(roots.base, 'remote')
    mkdirSync(remoteDir)
    const sshd = await startSshd(remoteDir)
    Object.assign(roots.env, sshd.env, { BACKUP_REMOTE_BANDWIDTH_LIMIT: '2000' })
    writeFile(path.join(roots.active, 'big', 'w.bin'), Buffer.alloc(64 << 20, 3))
    expect((await citadel(['backup', 'create'], roots.env)).code).toBe(0)
    const { child, done } = start(['backup', 'create', '--remote'], roots.env)
    const identity = roots.env.BACKUP_SSH_IDENTITY!
    for (let i = 0; i < 600 && masters(identity).length === 0; i++) await sleep(50)
    expect(masters(identity).length).toBe(1)
    expect(stateDirs(roots.app).length).toBe(1)
    child.kill('SIGKILL')
    await done
    await sleep(1000)
    expect(masters(identity)).toEqual([])
    const left = stateDirs(roots.app)
    expect(left.length).toBe(1)
    const again = await citadel(['backup', 'create', '--remote'], { ...roots.env, BACKUP_REMOTE_BANDWIDTH_LIMIT: '0' })
    expect(again.code, again.stdout + again.stderr).toBe(0)
    expect(existsSync(path.join(roots.app, '.citadel', left[0]!))).toBe(false)
    expect(stateDirs(roots.app)).toEqual([])
  }, 180_000)
})
