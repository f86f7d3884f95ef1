// The remote store (BACKUP_REMOTE) as monitoring sees it, through the real command against a private sshd:
// health-check's verdicts and JSON, status's remote line, the monitor's metrics, and how often it logs in.
import { execFileSync, spawnSync } from 'node:child_process'
import { mkdirSync, readFileSync, renameSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, describe, expect, it } from 'vitest'
import { backupName } from '../../lib/backup/store.ts'
import { DAY_MS } from '../../lib/infra/format.ts'
import { backUp, setUpServer } from '../backup-helpers.ts'
import { citadel, citadelJson, start, type Roots } from '../helpers.ts'
import { freePort, sshdMissing, startSshd } from '../ssh-helpers.ts'

// No registered model (one that is not there is a warning of its own) and thresholds this machine's disk cannot reach.
const CALM = { STORAGE_MONITOR_DISK_USAGE_WARNING: '0.98', STORAGE_MONITOR_DISK_USAGE_CRITICAL: '0.99', STORAGE_MONITOR_INODE_USAGE_WARNING: '0.98', STORAGE_MONITOR_INODE_USAGE_CRITICAL: '0.99', MODEL_REGISTRY: '' }

const cleanups: (() => void)[] = []
afterEach(() => {
  for (const clean of cleanups.splice(0)) clean()
})

/** A set-up server with one backup, sent to a private sshd's store; the sshd's logins are counted from here on. */
async function sentBackup(extraEnv: Record<string, string> = {}) {
  const roots = await setUpServer({ ...CALM, ...extraEnv })
  const remoteDir = path.join(roots.base, 'remote')
  mkdirSync(remoteDir)
  const sshd = await startSshd(remoteDir)
  Object.assign(roots.env, sshd.env)
  const name = await backUp(roots, { 'm/w.safetensors': 'w'.repeat(4000), 'm/config.json': '{}\n' })
  const sent = await citadelJson(['backup', 'create', '--remote'], roots.env)
  expect(sent.code, sent.stdout + sent.stderr).toBe(0)
  const before = sshd.logins()
  return { roots, sshd, name, remoteStore: path.join(remoteDir, 'models'), logins: () => sshd.logins() - before }
}

const remoteProblems = (doc: any) => doc.problems.filter((p: any) => p.key.startsWith('backups:remote-'))
const metricsOf = (roots: Roots) => readFileSync(path.join(roots.app, 'metrics', 'citadel.prom'), 'utf8')
const sample = (metrics: string, name: string) => new RegExp(`^${name} (\\S+)$`, 'm').exec(metrics)?.[1]

describe.skipIf(sshdMissing)('the remote store in health-check, status and the metrics', () => {
  it('a fresh remote backup is ok; the JSON, the status line and the metrics carry it, and its verification', async () => {
    const { roots, name, sshd } = await sentBackup()
    const health = await citadelJson(['health-check'], roots.env)
    expect(health.code, JSON.stringify(health.doc.problems)).toBe(0)
    const label = `root@127.0.0.1:${path.join(roots.base, 'remote', 'models')}`
    expect(health.doc.backups_remote).toEqual({
      store: label, checked_at: expect.any(String), reachable: true, error: null, complete: 1,
      newest: { name, created: expect.any(String), age: expect.stringMatching(/^\d+m$/), age_seconds: expect.any(Number) },
      last_verification: null, free_bytes: expect.any(Number), total_bytes: expect.any(Number),
    })
    expect(health.doc.backups_remote.free_bytes).toBeGreaterThan(0)
    expect(Math.abs(Date.parse(health.doc.backups_remote.checked_at) - Date.now())).toBeLessThan(60_000)

    const verified = await citadelJson(['backup', 'verify', '--remote', '--sample', '1'], roots.env)
    expect(verified.code, verified.stdout + verified.stderr).toBe(0)
    const after = await citadelJson(['health-check'], roots.env)
    expect(after.code).toBe(0)
    expect(after.doc.backups_remote.last_verification).toMatchObject({ backup: name, ok: true, problems: 0 })

    const glance = await citadel(['status'], roots.env)
    expect(glance.stdout).toMatch(new RegExp(`^remote   ${name}, \\d+m old; last verification ok \\d+m ago, of ${name}; \\S+ \\S+ free$`, 'm'))

    const once = await citadel(['monitor', '--once'], roots.env)
    expect(once.code, once.stdout + once.stderr).toBe(0)
    const metrics = metricsOf(roots)
    expect(sample(metrics, 'citadel_backup_remote_reachable')).toBe('1')
    expect(sample(metrics, 'citadel_backup_remote_complete')).toBe('1')
    expect(Number(sample(metrics, 'citadel_backup_remote_newest_timestamp_seconds'))).toBe(Date.parse(after.doc.backups_remote.newest.created) / 1000)
    expect(Number(sample(metrics, 'citadel_backup_remote_newest_age_seconds'))).toBeLessThan(600)
    expect(sample(metrics, 'citadel_backup_remote_last_verification_success')).toBe('1')
    expect(Number(sample(metrics, 'citadel_backup_remote_last_verification_timestamp_seconds'))).toBe(Date.parse(after.doc.backups_remote.last_verification.at) / 1000)
    expect(Number(sample(metrics, 'citadel_backup_remote_free_bytes'))).toBeGreaterThan(0)
    expect(Number(sample(metrics, 'citadel_backup_remote_checked_timestamp_seconds'))).toBeGreaterThan(Date.now() / 1000 - 60)
    expect(sshd.logins()).toBeGreaterThan(0)
  }, 90_000)

  it('warns, naming BACKUP_REMOTE_MAX_AGE_DAYS, when the newest remote backup is older', async () => {
    const { roots, name, remoteStore } = await sentBackup()
    // The remote copy made ten days ago: renamed to an older backup's name, latest pointed at it.
    const old = backupName(new Date(Date.now() - 10 * DAY_MS), 'full')
    renameSync(path.join(remoteStore, name), path.join(remoteStore, old))
    unlinkSync(path.join(remoteStore, 'latest'))
    symlinkSync(old, path.join(remoteStore, 'latest'))

    const text = await citadel(['health-check'], roots.env)
    expect(text.code, text.stdout).toBe(1)
    expect(text.stdout.split('\n')).toContain(`warning  backups     the newest remote backup, ${old} in root@127.0.0.1:${remoteStore}, is 10d 0h old (more than BACKUP_REMOTE_MAX_AGE_DAYS=8 days): run citadel backup create --remote`)
    const json = await citadelJson(['health-check'], roots.env)
    expect(remoteProblems(json.doc).map((p: any) => `${p.severity} ${p.key}`)).toEqual(['warning backups:remote-overdue'])
    expect(json.doc.backups_remote.newest).toMatchObject({ name: old, age: '10d 0h' })
    expect(json.doc.backups_remote.newest.age_seconds).toBeGreaterThanOrEqual(10 * 86400)
    // The local backup is fresh: only the remote side is late.
    expect(json.doc.problems).toHaveLength(1)

    const patient = await citadelJson(['health-check'], { ...roots.env, BACKUP_REMOTE_MAX_AGE_DAYS: '11' })
    expect(patient.code, JSON.stringify(patient.doc.problems)).toBe(0)
  }, 90_000)

  it('warns when the last remote verification failed', async () => {
    const { roots, name, remoteStore } = await sentBackup()
    const victim = path.join(remoteStore, name, 'data', 'm', 'w.safetensors')
    const content = readFileSync(victim)
    content[100] ^= 0x01
    writeFileSync(victim, content)
    const verify = await citadelJson(['backup', 'verify', '--remote', '--sample', '1'], roots.env)
    expect(verify.code, verify.stdout + verify.stderr).toBe(2)

    const json = await citadelJson(['health-check'], roots.env)
    expect(json.code).toBe(1)
    expect(remoteProblems(json.doc)).toEqual([{
      check: 'backups', severity: 'warning', key: 'backups:remote-verification',
      message: expect.stringMatching(new RegExp(`^the last remote verification, of ${name} in root@127\\.0\\.0\\.1:${remoteStore} at \\S+, failed: 1 problem \\(citadel backup verify --remote ${name} --sample 1 names them\\)$`)),
    }])
    expect(json.doc.backups_remote.last_verification).toMatchObject({ backup: name, ok: false, problems: 1 })
    const glance = await citadel(['status'], roots.env)
    expect(glance.stdout).toMatch(new RegExp(`^remote   ${name}, \\d+m old; last verification FAILED \\(1 problem\\) \\d+m ago, of ${name}; `, 'm'))
    await citadel(['monitor', '--once'], roots.env)
    expect(sample(metricsOf(roots), 'citadel_backup_remote_last_verification_success')).toBe('0')
  }, 90_000)

  it('a port nothing listens on is a warning with ssh\'s error, in seconds; the metrics say unreachable', async () => {
    const roots = await setUpServer(CALM)
    await backUp(roots, { 'm/a.bin': 'a' })
    const port = await freePort()
    const env = { ...roots.env, BACKUP_REMOTE: `root@127.0.0.1:${roots.base}/nowhere`, BACKUP_SSH_PORT: String(port), BACKUP_SSH_STRICT_HOST_KEY_CHECKING: 'no' }
    const t0 = Date.now()
    const json = await citadelJson(['health-check'], env)
    expect(Date.now() - t0).toBeLessThan(40_000)
    expect(json.code).toBe(1)
    expect(remoteProblems(json.doc)).toEqual([{
      check: 'backups', severity: 'warning', key: 'backups:remote-unreachable',
      message: `the remote backup store root@127.0.0.1:${roots.base}/nowhere/models is unreachable: cannot reach the remote backup host root@127.0.0.1 on port ${port}: ssh: connect to host 127.0.0.1 port ${port}: Connection refused`,
    }])
    expect(json.doc.backups_remote).toMatchObject({ reachable: false, complete: null, newest: null, last_verification: null, free_bytes: null })
    expect((await citadel(['status'], env)).stdout).toMatch(/^remote   UNREACHABLE root@127\.0\.0\.1:\S+: cannot reach .*Connection refused$/m)
    await citadel(['monitor', '--once'], env)
    const metrics = metricsOf(roots)
    expect(sample(metrics, 'citadel_backup_remote_reachable')).toBe('0')
    expect(sample(metrics, 'citadel_backup_remote_complete')).toBeUndefined()
    expect(metrics).toContain('# TYPE citadel_backup_remote_complete gauge')
  }, 60_000)

  it('a host that accepts the connection and never answers is a warning within 40 s, not a hang', async () => {
    const roots = await setUpServer(CALM)
    await backUp(roots, { 'm/a.bin': 'a' })
    const held: net.Socket[] = []
    const silent = net.createServer((socket) => held.push(socket))
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
    cleanups.push(() => {
      for (const s of held) s.destroy()
      silent.close()
    })
    const { port } = silent.address() as net.AddressInfo
    const env = { ...roots.env, BACKUP_REMOTE: `root@127.0.0.1:${roots.base}/nowhere`, BACKUP_SSH_PORT: String(port), BACKUP_SSH_STRICT_HOST_KEY_CHECKING: 'no' }
    const t0 = Date.now()
    const json = await citadelJson(['health-check'], env)
    const took = Date.now() - t0
    expect(took).toBeLessThan(40_000)
    expect(held.length).toBeGreaterThan(0)
    expect(json.code).toBe(1)
    expect(remoteProblems(json.doc)).toEqual([expect.objectContaining({ key: 'backups:remote-unreachable', message: expect.stringMatching(/unreachable: .*(timed out|no answer)/) })])
  }, 60_000)

  it('a store that hangs once logged in (a backup.json that never reads to its end) is a warning after 30 s, not a hang', async () => {
    const { roots, name, remoteStore } = await sentBackup()
    const fifo = path.join(remoteStore, name, 'backup.json')
    unlinkSync(fifo)
    execFileSync('mkfifo', [fifo])
    // The remote cat waits on the FIFO for a writer: a short one lets it go after the check.
    cleanups.push(() => spawnSync('timeout', ['2', 'sh', '-c', 'exec 3>"$1"', 'sh', fifo]))
    const t0 = Date.now()
    const json = await citadelJson(['health-check'], roots.env)
    const took = Date.now() - t0
    expect(took).toBeGreaterThanOrEqual(30_000)
    expect(took).toBeLessThan(45_000)
    expect(remoteProblems(json.doc)).toEqual([{
      check: 'backups', severity: 'warning', key: 'backups:remote-unreachable',
      message: `the remote backup store root@127.0.0.1:${remoteStore} is unreachable: no answer from the remote backup host within 30 s`,
    }])
  }, 90_000)

  it('the monitor reads the remote store at most every STORAGE_MONITOR_REMOTE_INTERVAL; status reuses its reading', async () => {
    const { roots, logins } = await sentBackup()
    const first = await citadel(['monitor', '--once'], roots.env)
    expect(first.code, first.stdout + first.stderr).toBe(0)
    expect(logins()).toBe(1)
    const checked = JSON.parse(readFileSync(path.join(roots.app, 'state', 'health.json'), 'utf8')).backups_remote.checked_at
    // A second monitor takes the last reading over from monitor.json: it is fresh, no ssh.
    await citadel(['monitor', '--once'], roots.env)
    expect(logins()).toBe(1)
    expect(JSON.parse(readFileSync(path.join(roots.app, 'state', 'health.json'), 'utf8')).backups_remote.checked_at).toBe(checked)
    // Once the reading is older than the interval, the next cycle reads again.
    await sleep(1100)
    await citadel(['monitor', '--once'], { ...roots.env, STORAGE_MONITOR_REMOTE_INTERVAL: '1' })
    expect(logins()).toBe(2)

    // A running monitor, a cycle a second, the remote store every 3 s.
    const run = start(['monitor', '--interval', '1'], { ...roots.env, STORAGE_MONITOR_REMOTE_INTERVAL: '3' })
    cleanups.push(() => run.child.kill('SIGKILL'))
    const cycles = new Set<string>()
    const t0 = Date.now()
    while (cycles.size < 8 && Date.now() - t0 < 30_000) {
      try {
        cycles.add(JSON.parse(readFileSync(path.join(roots.app, 'state', 'monitor.json'), 'utf8')).last_cycle_at)
      } catch {
        // Between two cycles the file is replaced by rename; a read never sees half of it, but may race the first.
      }
      await sleep(100)
    }
    const seconds = (Date.now() - t0) / 1000
    expect(cycles.size).toBeGreaterThanOrEqual(8)
    const reads = logins() - 2
    expect(reads).toBeGreaterThanOrEqual(1)
    expect(reads).toBeLessThanOrEqual(Math.ceil(seconds / 3) + 1)
    expect(reads).toBeLessThan(cycles.size)
    run.child.kill('SIGTERM')
    expect((await run.done).code).toBe(0)

    // status takes a running monitor's fresh reading instead of logging in.
    const steady = start(['monitor', '--interval', '1'], roots.env)
    cleanups.push(() => steady.child.kill('SIGKILL'))
    const stateFile = path.join(roots.app, 'state', 'monitor.json')
    for (const until = Date.now() + 20_000; JSON.parse(readFileSync(stateFile, 'utf8')).pid !== steady.child.pid; await sleep(100))
      if (Date.now() > until) throw new Error('the monitor never wrote its state')
    const before = logins()
    const glance = await citadel(['status'], roots.env)
    expect(glance.stdout).toMatch(/^remote   backup_\S+, \d+m old; never verified; .* free \(monitor, \d+m ago\)$/m)
    expect(logins()).toBe(before)
    steady.child.kill('SIGTERM')
    await steady.done
  }, 120_000)
})
