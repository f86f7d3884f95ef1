// A name that starts like a setting but is none (a misspelling) is a warning naming it, where it stands and
// the closest setting; the run goes on, and --json's stdout stays one document.
import { writeFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { loadSettings } from '../../lib/infra/config.ts'
import { citadel, citadelJson, makeRoots } from '../helpers.ts'

const ENV_FILE = [
  '# citadel settings',
  'BACKUP_KEEP_MIN=2',
  'BACKUP_RETENTON_DAYS=7',
  'STORAGE_MONITOR_ALERT_COMMAND="echo one',
  'echo two"',
  '  export STORAGE_MONITOR_DISK_USAGE_WARNNG=0.1 # typo',
  'HF_TOKEN=not-ours',
  '',
].join('\n')

describe('misspelled settings', () => {
  it('names each one with its line in the env file, or the environment, and the closest setting', () => {
    const roots = makeRoots()
    writeFileSync(roots.env.CITADEL_ENV_FILE!, ENV_FILE)
    const s = loadSettings({ CITADEL_ENV_FILE: roots.env.CITADEL_ENV_FILE, CITADEL_MODEL_ROOT: '/x', CITADEL_MODEL_MIXTRAL: '/models/mixtral', MODELS_DIR: '/y', CITADEL_DEMO_DIR: '/demo' })
    expect(s.warnings).toEqual([
      `BACKUP_RETENTON_DAYS (line 3 of ${roots.env.CITADEL_ENV_FILE}) is not a citadel setting and is ignored; did you mean BACKUP_RETENTION_DAYS?`,
      `STORAGE_MONITOR_DISK_USAGE_WARNNG (line 6 of ${roots.env.CITADEL_ENV_FILE}) is not a citadel setting and is ignored; did you mean STORAGE_MONITOR_DISK_USAGE_WARNING?`,
      'CITADEL_MODEL_ROOT (the environment) is not a citadel setting and is ignored; did you mean CITADEL_MODELS_ROOT?',
    ])
    // The rest of the file still counts, and what was misspelled takes its default.
    expect(s.backup).toMatchObject({ keepMin: 2, retentionDays: 30 })
    expect(s.monitor.diskWarning).toBe(0.8)
    // CITADEL_MODEL_<ALIAS> of a registered model is what storage-env.sh exports, not a misspelling.
    expect(loadSettings({ CITADEL_ENV_FILE: roots.env.CITADEL_ENV_FILE, MODEL_REGISTRY: 'qwen=qwen-7b', CITADEL_MODEL_QWEN: '/q' }).warnings).toHaveLength(2)
    writeFileSync(roots.env.CITADEL_ENV_FILE!, '')
    expect(loadSettings(roots.env).warnings).toEqual([])
  })

  it('warns once on stderr and goes on, also for health-check, never on the stdout of --json', async () => {
    const roots = makeRoots({ BACKUP_RETENTON_DAYS: '7' })
    writeFileSync(roots.env.CITADEL_ENV_FILE!, 'CITADEL_MODEL_ROOT=/x\n')
    const warned = [
      `citadel: warning: CITADEL_MODEL_ROOT (line 1 of ${roots.env.CITADEL_ENV_FILE}) is not a citadel setting and is ignored; did you mean CITADEL_MODELS_ROOT?`,
      'citadel: warning: BACKUP_RETENTON_DAYS (the environment) is not a citadel setting and is ignored; did you mean BACKUP_RETENTION_DAYS?',
    ]
    const setup = await citadelJson(['run', 'initial-setup'], roots.env)
    expect(setup.code, setup.stderr).toBe(0)
    expect(setup.stderr.split('\n').filter((l) => l.includes('not a citadel setting'))).toEqual(warned)

    const health = await citadelJson(['health-check'], roots.env)
    expect(health.doc.overall).toBeDefined()
    expect(health.stdout).not.toContain('not a citadel setting')
    expect(health.stderr.split('\n').filter((l) => l.includes('not a citadel setting'))).toEqual(warned)

    const plugin = await citadel(['health-check'], roots.env)
    expect(plugin.stdout).toMatch(/^CITADEL (OK|WARNING|CRITICAL)/)
    expect(plugin.stderr.split('\n').filter((l) => l.includes('not a citadel setting'))).toEqual(warned)
  })
})
