import { readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { ConfigError, loadSettings, SETTINGS } from '../../lib/infra/config.ts'
import { makeRoots, PROJECT } from '../helpers.ts'

describe('settings', () => {
  it('uses the defaults of the brief when nothing is set', () => {
    const roots = makeRoots()
    const s = loadSettings({ CITADEL_ENV_FILE: roots.env.CITADEL_ENV_FILE })
    expect(s.appRoot).toBe('/opt/citadel')
    expect(s.modelsActive).toBe('/mnt/citadel-models/active')
    expect(s.models).toEqual([{ alias: 'mixtral', dir: 'mixtral-8x7b-instruct' }, { alias: 'yi34b', dir: 'yi-34b-chat' }])
    expect(s.dirMode).toBe(0o755)
    expect(s.monitor).toMatchObject({ diskWarning: 0.8, diskCritical: 0.9, checkInterval: 60, remoteInterval: 3600 })
    expect(s.backup).toEqual({ retentionDays: 30, verifySampleRate: 0.1, keepMin: 3, maxShrink: 0.5, drillMaxAgeDays: 35, storeLockWait: 1800, remoteMaxAgeDays: 8, ssh: { port: 22, strictHostKeyChecking: 'accept-new' } })
    expect(s.owner).toBeUndefined()
  })

  it('takes the environment over the .env file over the defaults', () => {
    const roots = makeRoots()
    writeFileSync(roots.env.CITADEL_ENV_FILE!, 'CITADEL_APP_ROOT=/from/file\nBACKUP_KEEP_MIN=5\nSYMLINK_FORCE_RECREATE=yes\n')
    const s = loadSettings({ CITADEL_ENV_FILE: roots.env.CITADEL_ENV_FILE, CITADEL_APP_ROOT: '/from/env/' })
    expect(s.appRoot).toBe('/from/env')
    expect(s.backup.keepMin).toBe(5)
    expect(s.symlinkForceRecreate).toBe(true)
    expect(s.sources.BACKUP_KEEP_MIN).toBe(roots.env.CITADEL_ENV_FILE)
  })

  it('accepts every boolean spelling and owner forms', () => {
    const roots = makeRoots()
    for (const [word, value] of [['true', true], ['1', true], ['YES', true], ['false', false], ['0', false], ['no', false]] as const) {
      expect(loadSettings({ CITADEL_ENV_FILE: roots.env.CITADEL_ENV_FILE, MODEL_AUTO_BACKUP: word }).modelAutoBackup).toBe(value)
    }
    expect(loadSettings({ CITADEL_ENV_FILE: roots.env.CITADEL_ENV_FILE, CITADEL_OWNER: 'citadel:ops' }).owner).toEqual({ user: 'citadel', group: 'ops' })
    expect(loadSettings({ CITADEL_ENV_FILE: roots.env.CITADEL_ENV_FILE, CITADEL_OWNER: '1000:1000' }).owner).toEqual({ user: '1000', group: '1000' })
  })

  it('reads BACKUP_REMOTE as user, host and directory, with the ssh settings beside it', () => {
    const env = { CITADEL_ENV_FILE: makeRoots().env.CITADEL_ENV_FILE }
    expect(loadSettings({ ...env, BACKUP_REMOTE: 'backup@nas.example:/srv/citadel-backup/' }).backup.remote)
      .toEqual({ user: 'backup', host: 'nas.example', dir: '/srv/citadel-backup', port: 22, identity: undefined, strictHostKeyChecking: 'accept-new', knownHosts: undefined, bandwidthLimit: 0 })
    expect(loadSettings({ ...env, BACKUP_REMOTE: '[fd00::7]:/backup dir', BACKUP_SSH_PORT: '2222' }).backup.remote).toMatchObject({ user: undefined, host: 'fd00::7', dir: '/backup dir', port: 2222 })
    expect(loadSettings(env).backup.remote).toBeUndefined()
  })

  it('.env.example lists every setting with its default', () => {
    const example = readFileSync(path.join(PROJECT, '.env.example'), 'utf8')
    for (const [name, spec] of Object.entries(SETTINGS)) {
      const line = example.split('\n').find((l) => l.replace(/^#\s*/, '').startsWith(`${name}=`))
      expect(line, `${name} in .env.example`).toBeDefined()
      expect(line!.replace(/^#\s*/, ''), name).toBe(`${name}=${spec.default ?? ''}`)
    }
  })

})

// Each bad value, the setting that must be named, and a word of what is expected.
const BAD: [string, string, string][] = [
  ['CITADEL_APP_ROOT', 'relative/path', 'absolute path'],
  ['CITADEL_MODELS_ROOT', '', 'absolute path'],
  ['CITADEL_MODELS_ACTIVE', 'active', 'absolute path'],
  ['CITADEL_BACKUP_ROOT', '~/backup', 'absolute path'],
  ['CITADEL_OWNER', 'bad owner!', 'user:group'],
  ['CITADEL_DIR_MODE', '0999', 'octal mode'],
  ['MODEL_REGISTRY', 'Mixtral=mixtral', 'alias'],
  ['MODEL_REGISTRY', 'mixtral=../etc', 'single path component'],
  ['MODEL_REGISTRY', 'mixtral=a/b', 'single path component'],
  ['MODEL_REGISTRY', 'mixtral=..', 'single path component'],
  ['MODEL_REGISTRY', 'mixtral=', 'single path component'],
  ['MODEL_REGISTRY', 'mixtral', 'alias=directory'],
  ['MODEL_REGISTRY', 'a-b=x,a_b=y', 'clashes'],
  ['MODEL_DOWNLOAD_TIMEOUT', '-5', 'whole number'],
  ['MODEL_VERIFICATION_ENABLED', 'maybe', 'true/false'],
  ['MODEL_AUTO_BACKUP', '2', 'true/false'],
  ['SYMLINK_FORCE_RECREATE', 'on', 'true/false'],
  ['STORAGE_MONITOR_DISK_USAGE_WARNING', '1.5', 'ratio'],
  ['STORAGE_MONITOR_DISK_USAGE_CRITICAL', '0', 'ratio'],
  ['STORAGE_MONITOR_INODE_USAGE_WARNING', 'abc', 'ratio'],
  ['STORAGE_MONITOR_INODE_USAGE_CRITICAL', '90%', 'ratio'],
  ['STORAGE_MONITOR_DISK_USAGE_WARNING', '0.95', 'less than STORAGE_MONITOR_DISK_USAGE_CRITICAL'],
  ['STORAGE_MONITOR_INODE_USAGE_WARNING', '0.9', 'less than STORAGE_MONITOR_INODE_USAGE_CRITICAL'],
  ['STORAGE_MONITOR_CHECK_INTERVAL', '0', 'whole number'],
  ['BACKUP_RETENTION_DAYS', '1.5', 'whole number'],
  ['BACKUP_VERIFY_SAMPLE_RATE', '0', 'ratio'],
  ['BACKUP_KEEP_MIN', '0', 'whole number'],
  ['BACKUP_DRILL_MAX_AGE_DAYS', 'monthly', 'whole number of days'],
  ['BACKUP_REMOTE_MAX_AGE_DAYS', '0', 'whole number of days of at least 1'],
  ['STORAGE_MONITOR_REMOTE_INTERVAL', '1h', 'whole number of at least 1'],
  ['BACKUP_REMOTE', 'nas', '[user@]host:/absolute/path'],
  ['BACKUP_REMOTE', 'nas:relative/dir', '[user@]host:/absolute/path'],
  ['BACKUP_REMOTE', '-oProxyCommand=touch:/x', '[user@]host:/absolute/path'],
  ['BACKUP_REMOTE', 'nas:/', 'not / itself'],
  ['BACKUP_SSH_PORT', '70000', 'port from 1 to 65535'],
  ['BACKUP_SSH_IDENTITY', 'id_ed25519', 'absolute path'],
  ['BACKUP_SSH_KNOWN_HOSTS', '/etc/ssh/"known"', 'without double quotes'],
  ['BACKUP_SSH_STRICT_HOST_KEY_CHECKING', 'maybe', 'yes, accept-new or no'],
  ['BACKUP_REMOTE_BANDWIDTH_LIMIT', 'fast', 'whole number'],
  ['CITADEL_SYSTEMD_DIR', 'systemd', 'absolute path'],
  ['CITADEL_DAILY_SCHEDULE', '03:00\nExecStartPre=/bin/sh', 'one line'],
  ['CITADEL_TIMER_RANDOM_DELAY', '-1', 'whole number'],
]

/** The problems loadSettings reports for `env`, one line each; fails the test when it reports none. */
function problemsOf(env: NodeJS.ProcessEnv): string[] {
  try {
    loadSettings(env)
  } catch (err) {
    if (err instanceof ConfigError) return err.problems
    throw err
  }
  throw new Error(`loadSettings accepted ${JSON.stringify(env)}`)
}

describe('invalid settings', () => {
  it.each(BAD)('%s=%j is refused in one line naming it and what is expected', (name, value, expected) => {
    const problems = problemsOf({ ...makeRoots().env, [name]: value })
    expect(problems, problems.join('\n')).toHaveLength(1)
    expect(problems[0]).toContain(`${name}=${JSON.stringify(value)}`)
    expect(problems[0]).toContain(expected)
    expect(problems[0]).not.toContain('\n')
  })

  it('reports every bad setting at once, one line each, and names the .env file it came from', () => {
    const roots = makeRoots()
    writeFileSync(roots.env.CITADEL_ENV_FILE!, 'BACKUP_KEEP_MIN=none\n')
    const problems = problemsOf({ ...roots.env, CITADEL_DIR_MODE: 'rwx' })
    expect(problems).toHaveLength(2)
    expect(problems.find((l) => l.includes('BACKUP_KEEP_MIN'))).toContain(roots.env.CITADEL_ENV_FILE)
    expect(problems.find((l) => l.includes('CITADEL_DIR_MODE'))).toBeDefined()
  })

  it.each([
    ['CITADEL_BACKUP_ROOT', (r: { models: string }) => path.join(r.models, 'backup'), 'inside it'],
    ['CITADEL_APP_ROOT', (r: { models: string }) => r.models, 'the same'],
  ])('%s nested in or equal to another root is refused in one line naming both', (name, value, what) => {
    const roots = makeRoots()
    const problems = problemsOf({ ...roots.env, [name]: value(roots) })
    expect(problems).toHaveLength(1)
    expect(problems[0]).toContain(name)
    expect(problems[0]).toContain('CITADEL_MODELS_ROOT')
    expect(problems[0]).toContain(what)
  })

  it('a CITADEL_ENV_FILE that does not exist is refused, naming it', () => {
    const roots = makeRoots()
    expect(problemsOf({ ...roots.env, CITADEL_ENV_FILE: path.join(roots.base, 'missing.env') })).toEqual([expect.stringContaining('CITADEL_ENV_FILE')])
  })
})
