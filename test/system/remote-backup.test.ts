// Off-host backups, for real: a private sshd on loopback, rsync over ssh, the stock sha256sum on the far
// side. The "remote host" is this machine, so the tests can look at what landed there.
import { execFileSync, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { describe, expect, it } from 'vitest'
import { backUp, setUpServer, storeOf, writeFile } from '../backup-helpers.ts'
import { citadel, citadelJson, snapshot, start, type Roots } from '../helpers.ts'
import { freePort, sshdMissing, startSshd } from '../ssh-helpers.ts'

/** A set-up server whose BACKUP_REMOTE is a private sshd serving `dirName` under the test's base. */
async function serverWithRemote(dirName = 'remote', extraEnv: Record<string, string> = {}) {
  const roots = await setUpServer()
  const remoteDir = path.join(roots.base, dirName)
  mkdirSync(remoteDir)
  const sshd = await startSshd(remoteDir)
  Object.assign(roots.env, sshd.env, extraEnv)
  return { roots, remoteStore: path.join(remoteDir, 'models'), sshd }
}

const remoteBackups = (store: string) => (existsSync(store) ? readdirSync(store).filter((n) => n.startsWith('backup_')).sort() : [])

async function remote(roots: Roots, action: string, ...args: string[]) {
  const result = await citadelJson(['backup', action, '--remote', ...args], roots.env)
  return { ...result, task: result.doc?.tasks?.[0] }
}

/** The stock sha256sum -c of a backup's whole manifest, from inside its data/. */
const sha256sumCheck = (backupDir: string) =>
  spawnSync('sha256sum', ['-c', '--strict', '--quiet', '../SHA256SUMS'], { cwd: path.join(backupDir, 'data'), encoding: 'utf8' })

describe.skipIf(sshdMissing)('backups over ssh', () => {
  it('sends a full and then an incremental backup, hard-linked to the previous remote one, with the manifest alongside', async () => {
    const { roots, remoteStore } = await serverWithRemote()
    const full = await backUp(roots, { 'm1/a.safetensors': 'A'.repeat(5000), 'm1/config.json': '{}', 'm2/b.bin': 'B'.repeat(3000) })
    const first = await remote(roots, 'create')
    expect(first.code, first.stderr + JSON.stringify(first.task)).toBe(0)
    expect(first.task.status).toBe('changed')
    expect(first.task.data).toMatchObject({ backup: full, sent: true, parent: null })
    expect(remoteBackups(remoteStore)).toEqual([full])
    expect(readlinkSync(path.join(remoteStore, 'latest'))).toBe(full)
    expect(readFileSync(path.join(remoteStore, full, 'SHA256SUMS'))).toEqual(readFileSync(path.join(storeOf(roots), full, 'SHA256SUMS')))
    expect(sha256sumCheck(path.join(remoteStore, full)).status).toBe(0)
    expect(JSON.parse(readFileSync(path.join(remoteStore, full, 'backup.json'), 'utf8'))).toMatchObject({ name: full, type: 'full', verifications: [] })

    // Sent again: already there, nothing changes.
    const again = await remote(roots, 'create')
    expect(again.code).toBe(0)
    expect(again.doc.stats.changed).toBe(0)

    writeFile(path.join(roots.active, 'm2', 'b.bin'), 'C'.repeat(3000))
    const incremental = await backUp(roots)
    const second = await remote(roots, 'create')
    expect(second.code, second.stderr + JSON.stringify(second.task)).toBe(0)
    expect(second.task.data).toMatchObject({ backup: incremental, parent: full })
    expect(remoteBackups(remoteStore)).toEqual([full, incremental])
    expect(readlinkSync(path.join(remoteStore, 'latest'))).toBe(incremental)
    const inode = (name: string, rel: string) => statSync(path.join(remoteStore, name, 'data', rel)).ino
    expect(inode(incremental, 'm1/a.safetensors')).toBe(inode(full, 'm1/a.safetensors'))
    expect(statSync(path.join(remoteStore, incremental, 'data', 'm1/a.safetensors')).nlink).toBe(2)
    expect(inode(incremental, 'm2/b.bin')).not.toBe(inode(full, 'm2/b.bin'))
    expect(readFileSync(path.join(remoteStore, incremental, 'data', 'm2/b.bin'), 'utf8')).toBe('C'.repeat(3000))
    expect(sha256sumCheck(path.join(remoteStore, incremental)).status).toBe(0)
    expect(remoteBackups(remoteStore).some((n) => n.endsWith('.partial'))).toBe(false)
  }, 60_000)

  it('verifies with the remote sha256sum, records it there, and finds one corrupted byte', async () => {
    const { roots, remoteStore } = await serverWithRemote()
    const name = await backUp(roots, { 'm/w1.safetensors': randomBytes(20_000).toString('hex'), 'm/w2.safetensors': 'x'.repeat(7000), 'm/empty': '' })
    expect((await remote(roots, 'create')).code).toBe(0)

    const ok = await remote(roots, 'verify', '--sample', '1')
    expect(ok.code, ok.stderr + JSON.stringify(ok.task)).toBe(0)
    expect(ok.task.data.verification).toMatchObject({ ok: true, files_checked: 3, files_hashed: 3 })
    const recorded = JSON.parse(readFileSync(path.join(remoteStore, name, 'backup.json'), 'utf8'))
    expect(recorded.verifications).toHaveLength(1)
    expect(Object.keys(JSON.parse(readFileSync(path.join(remoteStore, name, 'verify-state.json'), 'utf8'))).sort()).toEqual(['m/empty', 'm/w1.safetensors', 'm/w2.safetensors'])

    // One byte flipped in place: same size, same mtime, only the hash can tell.
    const victim = path.join(remoteStore, name, 'data', 'm', 'w2.safetensors')
    const { mtime } = statSync(victim)
    const content = readFileSync(victim)
    content[3500] ^= 0x01
    writeFileSync(victim, content)
    spawnSync('touch', ['-d', mtime.toISOString(), victim])
    const bad = await remote(roots, 'verify', '--sample', '1')
    expect(bad.code).toBe(2)
    expect(bad.task.status).toBe('failed')
    expect(bad.task.data.verification.problems).toEqual([expect.objectContaining({ kind: 'mismatch', path: 'm/w2.safetensors' })])
    // The local backup is untouched and still passes.
    const local = await citadelJson(['backup', 'verify', '--sample', '1'], roots.env)
    expect(local.code).toBe(0)

    // A missing file and a stray one are found by the catalog check, without hashing.
    writeFile(path.join(remoteStore, name, 'data', 'm', 'stray'), 'junk')
    const gone = path.join(remoteStore, name, 'data', 'm', 'w1.safetensors')
    spawnSync('rm', [gone])
    const worse = await remote(roots, 'verify', '--sample', '0.01', '--seed', '1')
    expect(worse.code).toBe(2)
    const kinds = worse.task.data.verification.problems.map((p: { kind: string; path: string }) => `${p.kind} ${p.path}`)
    expect(kinds).toEqual(expect.arrayContaining(['missing m/w1.safetensors', 'extra m/stray']))
  }, 60_000)

  it('an interrupted send leaves no complete-looking backup, and a killed one is cleaned up by the next send', async () => {
    // 64 KiB/s: the 1 MiB file takes about 16 s to send, time enough to interrupt it.
    const { roots, remoteStore } = await serverWithRemote('remote', { BACKUP_REMOTE_BANDWIDTH_LIMIT: '64' })
    const name = await backUp(roots, { 'm/shard.safetensors': randomBytes(1 << 19).toString('hex') })
    const sending = async () => {
      const run = start(['backup', 'create', '--remote'], roots.env)
      const partialData = path.join(remoteStore, `${name}.partial`, 'data')
      for (const until = Date.now() + 30_000; !(existsSync(partialData) && readdirSync(partialData).length > 0); await sleep(20))
        if (Date.now() > until) throw new Error('the send never started')
      return run
    }
    const interrupted = await sending()
    interrupted.child.kill('SIGINT')
    const stopped = await interrupted.done
    expect(stopped.code, stopped.stderr).toBe(99)
    expect(remoteBackups(remoteStore)).toEqual([])
    expect(existsSync(path.join(remoteStore, 'latest'))).toBe(false)

    const killed = await sending()
    killed.child.kill('SIGKILL')
    await killed.done
    // Whatever rsync had written stays as .partial: never under the backup's own name.
    for (const until = Date.now() + 10_000; spawnSync('pgrep', ['-f', `${name}.partial`]).status === 0 && Date.now() < until; ) await sleep(50)
    expect(remoteBackups(remoteStore).filter((n) => !n.endsWith('.partial'))).toEqual([])
    const status = await remote(roots, 'status')
    expect(status.task.data.backups).toEqual([])

    delete roots.env.BACKUP_REMOTE_BANDWIDTH_LIMIT
    const resumed = await remote(roots, 'create')
    expect(resumed.code, resumed.stderr + JSON.stringify(resumed.task)).toBe(0)
    expect(remoteBackups(remoteStore)).toEqual([name])
    expect(sha256sumCheck(path.join(remoteStore, name)).status).toBe(0)
  }, 90_000)

  it('a remote disk without room for the backup: one line with the sizes, nothing sent, nothing left there', async () => {
    const { roots, remoteStore } = await serverWithRemote()
    // The remote directory becomes an 8 MiB tmpfs; the backup holds 12 MiB.
    const remoteDir = path.dirname(remoteStore)
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', remoteDir])
    try {
      await backUp(roots, { 'm/big.safetensors': randomBytes(6 << 20).toString('hex') })
      const full = await remote(roots, 'create')
      expect(full.code).toBe(2)
      expect(full.task.msg).toMatch(/^not enough space on root@127\.0\.0\.1:.*: sending backup_\S+ needs about 1[23]\.\d MiB, [\d.]+ (KiB|MiB) are free$/)
      expect(readdirSync(remoteStore)).toEqual([])
    } finally {
      execFileSync('umount', [remoteDir])
    }
  }, 60_000)

  it('an unreachable host gives one clear line and exit 2, and changes nothing here', async () => {
    const { roots } = await serverWithRemote()
    await backUp(roots, { 'm/a': 'a' })
    roots.env.BACKUP_SSH_PORT = String(await freePort())
    // The run log and the lock directory change with every run; the disks must not.
    const disks = () => [snapshot(roots.models), snapshot(roots.backup), snapshot(path.join(roots.base, 'remote'))]
    const before = disks()
    for (const action of ['create', 'verify', 'status', 'cleanup']) {
      const result = await remote(roots, action)
      expect(result.code, action).toBe(2)
      expect(result.task.msg).toMatch(new RegExp(`^cannot reach the remote backup host root@127\\.0\\.0\\.1 on port ${roots.env.BACKUP_SSH_PORT}: .*Connection refused`))
    }
    const text = await citadel(['backup', 'status', '--remote'], roots.env)
    expect(text.code).toBe(2)
    expect(text.stdout + text.stderr).toContain('Connection refused')
    expect(disks()).toEqual(before)
  }, 60_000)

  it('refuses an unknown host key under yes, and records it on first use under accept-new', async () => {
    const { roots } = await serverWithRemote()
    const knownHosts = path.join(roots.base, 'known_hosts')
    writeFileSync(knownHosts, '')
    Object.assign(roots.env, { BACKUP_SSH_KNOWN_HOSTS: knownHosts })
    const refused = await remote(roots, 'status')
    expect(refused.code).toBe(2)
    expect(refused.task.msg).toMatch(/^cannot reach the remote backup host .*: Host key verification failed/)
    expect(readFileSync(knownHosts, 'utf8')).toBe('')
    roots.env.BACKUP_SSH_STRICT_HOST_KEY_CHECKING = 'accept-new'
    const accepted = await remote(roots, 'status')
    expect(accepted.code, JSON.stringify(accepted.task)).toBe(0)
    expect(readFileSync(knownHosts, 'utf8')).toContain('ssh-ed25519')
  }, 60_000)

  it('works with a remote path full of characters a shell would expand', async () => {
    const { roots, remoteStore } = await serverWithRemote(`remote dir 'quoted' $HOME; *`)
    const name = await backUp(roots, { "m/it's a file $x.bin": 'data', 'm/ü n i.json': '{}' })
    const sent = await remote(roots, 'create')
    expect(sent.code, sent.stderr + JSON.stringify(sent.task)).toBe(0)
    expect(remoteBackups(remoteStore)).toEqual([name])
    expect(readFileSync(path.join(remoteStore, name, 'data', "m/it's a file $x.bin"), 'utf8')).toBe('data')
    const verified = await remote(roots, 'verify', '--sample', '1')
    expect(verified.code, JSON.stringify(verified.task)).toBe(0)
    expect(verified.task.data.verification.files_hashed).toBe(2)
  }, 60_000)

  it('reads back the names sha256sum escapes (a backslash, a newline) and finds a bad one among them', async () => {
    const { roots, remoteStore } = await serverWithRemote()
    const name = await backUp(roots, { 'm/back\\slash.bin': 'one', 'm/new\nline.bin': 'two' })
    expect((await remote(roots, 'create')).code).toBe(0)
    writeFileSync(path.join(remoteStore, name, 'data', 'm', 'new\nline.bin'), 'TWO')
    const bad = await remote(roots, 'verify', '--sample', '1')
    expect(bad.code).toBe(2)
    expect(bad.task.data.verification.problems).toEqual([expect.objectContaining({ kind: 'mismatch', path: 'm/new\nline.bin' })])
    expect(bad.task.data.verification.files_hashed).toBe(2)
  }, 60_000)

  it('status and cleanup follow the local rules; --check changes nothing on the remote host', async () => {
    const { roots, remoteStore } = await serverWithRemote('remote', { BACKUP_KEEP_MIN: '1' })
    const names: string[] = []
    for (const i of [1, 2, 3]) {
      names.push(await backUp(roots, { [`m/f${i}`]: String(i) }))
      expect((await remote(roots, 'create')).code).toBe(0)
    }
    // The oldest is the one whose verification passed: cleanup keeps it, as locally.
    expect((await remote(roots, 'verify', names[0]!)).code).toBe(0)
    const status = await remote(roots, 'status')
    expect(status.code).toBe(0)
    expect(status.task.data.backups.map((b: { name: string; latest: boolean; last_verification: unknown }) => [b.name, b.latest, b.last_verification !== null]))
      .toEqual([[names[0], false, true], [names[1], false, false], [names[2], true, false]])
    expect(status.task.data.totals.bytes_on_disk).toBeGreaterThan(0)

    const before = snapshot(remoteStore)
    const dry = await remote(roots, 'cleanup', '0', '--check')
    expect(dry.code).toBe(0)
    expect(dry.task.data.removed).toEqual([names[1]])
    expect(snapshot(remoteStore)).toEqual(before)
    const dryCreate = await citadelJson(['backup', 'create', '--remote', names[0]!, '--check'], roots.env)
    expect(dryCreate.code).toBe(0)

    const cleaned = await remote(roots, 'cleanup', '0')
    expect(cleaned.code).toBe(0)
    expect(cleaned.task.data.backups.map((b: { verdict: string }) => b.verdict)).toEqual(['keep: last verified', 'remove', 'keep: newest 1'])
    expect(remoteBackups(remoteStore)).toEqual([names[0], names[2]])
    expect(lstatSync(path.join(remoteStore, 'latest')).isSymbolicLink()).toBe(true)
    const twice = await remote(roots, 'cleanup', '0')
    expect(twice.doc.stats.changed).toBe(0)
  }, 90_000)
})

describe.skipIf(sshdMissing)('the weekly playbook with BACKUP_REMOTE', () => {
  it('sends the verified full backup off the host and verifies the remote copy', async () => {
    const { roots, remoteStore } = await serverWithRemote()
    writeFile(path.join(roots.active, 'm', 'w.safetensors'), 'w'.repeat(10_000))
    const weekly = await citadelJson(['run', 'weekly', '--skip-tags', 'perf'], roots.env)
    expect(weekly.code, weekly.stderr + JSON.stringify(weekly.doc?.tasks)).toBe(0)
    expect(weekly.doc.tasks.map((t: { name: string; status: string }) => [t.name, t.status])).toEqual([
      ['backup-create', 'changed'], ['backup-verify', 'ok'], ['backup-restore', 'ok'], ['remote-backup-create', 'changed'], ['remote-backup-verify', 'ok'], ['model-verify', 'skipped'], ['backup-cleanup', 'ok'], ['remote-backup-cleanup', 'ok'], ['health-report', 'ok'],
    ])
    const name = weekly.doc.tasks[0].data.backup
    expect(remoteBackups(remoteStore)).toEqual([name])
    expect(JSON.parse(readFileSync(path.join(remoteStore, name, 'backup.json'), 'utf8')).verifications).toHaveLength(1)
  }, 60_000)
})

describe('backups over ssh without a remote', () => {
  it('says BACKUP_REMOTE is not set and exits 2', async () => {
    const roots = await setUpServer()
    const result = await citadel(['backup', 'status', '--remote'], roots.env)
    expect(result.code).toBe(2)
    expect(result.stdout + result.stderr).toContain('BACKUP_REMOTE is not set')
  })
})
