// Monitoring of the models on real temporary roots: a byte flipped in a live shard is found by model verify
// and made critical by health-check, naming the file and the restore that heals it (which is then run); an
// unfinished download left for two days and an archive past its share of the model disk are warnings;
// status shows each alias's version and last verification; the metrics declare every model family.
import { readdirSync, readFileSync, statfsSync, utimesSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { setUpServer, writeFile } from '../backup-helpers.ts'
import { citadel, type Roots } from '../helpers.ts'
import { writeModel } from '../model-helpers.ts'

const MIXTRAL = 'mixtral-8x7b-instruct'
const SHARD2 = 'model-00002-of-00002.safetensors'
const DAY_S = 86_400

interface Problem { check: string; severity: string; key: string; message: string }

async function healthCheck(env: Record<string, string>): Promise<{ code: number | null; report: { problems: Problem[]; models: any } }> {
  const run = await citadel(['health-check', '--json'], env)
  return { code: run.code, report: JSON.parse(run.stdout) }
}
const backups = (roots: Roots) => readdirSync(path.join(roots.backup, 'models')).filter((n) => n.startsWith('backup_')).sort()
const modelProblems = (report: { problems: Problem[] }) => report.problems.filter((p) => p.check === 'models')

const ONLY_MIXTRAL = { MODEL_REGISTRY: `mixtral=${MIXTRAL}` }
const NO_MODELS = { MODEL_REGISTRY: '' }

/** mixtral live (its link made), backed up and verified in full; its backup is the store's only one. */
async function liveModel(extraEnv: Record<string, string> = ONLY_MIXTRAL): Promise<Roots> {
  const roots = await setUpServer(extraEnv)
  writeModel(path.join(roots.active, MIXTRAL))
  expect((await citadel(['task', 'repair-symlinks'], roots.env)).code).toBe(0)
  const backup = await citadel(['backup', 'create'], roots.env)
  expect(backup.code, backup.stdout + backup.stderr).toBe(0)
  const verify = await citadel(['model', 'verify'], roots.env)
  expect(verify.code, verify.stdout + verify.stderr).toBe(0)
  return roots
}

describe('model health', () => {
  it('a live shard that no longer matches is critical in health-check, names the file and the restore, and clears once restored and verified', async () => {
    const roots = await liveModel()
    const before = await healthCheck(roots.env)
    expect(modelProblems(before.report)).toEqual([])
    expect(before.report.models.aliases[0]).toMatchObject({ alias: 'mixtral', dir: MIXTRAL, present: true, last_verification: { sample: false, ok: true, problems: [] } })
    expect(before.code).toBeLessThan(2)

    const shard = path.join(roots.active, MIXTRAL, SHARD2)
    const bytes = readFileSync(shard)
    bytes[bytes.length - 3] ^= 0x40
    writeFileSync(shard, bytes)
    const verify = await citadel(['model', 'verify', 'mixtral'], roots.env)
    expect(verify.code).toBe(2)

    const after = await healthCheck(roots.env)
    expect(after.code).toBe(2)
    const [critical] = modelProblems(after.report)
    expect(critical).toMatchObject({ check: 'models', severity: 'critical', key: 'models:verify:mixtral' })
    expect(critical!.message).toMatch(new RegExp(`^last verification of mixtral \\(${MIXTRAL}\\): .* ago, failed: ${SHARD2} sha256 [0-9a-f]{64} differs from the one recorded on `))
    const [backup] = backups(roots)
    expect(after.report.models.aliases[0].restore_from).toBe(backup)
    expect(critical!.message).toContain(`: restore it with citadel backup restore ${backup} --path ${MIXTRAL}/${SHARD2} (the newest backup holding it as recorded), then citadel model verify mixtral`)
    const plugin = await citadel(['health-check'], roots.env)
    expect(plugin.code).toBe(2)
    expect(plugin.stdout).toMatch(new RegExp(`critical +models +last verification of mixtral .*${SHARD2}`))

    // The fix it names works: the restore brings the shard back, the next verify passes, the problem is gone.
    const restore = await citadel(['backup', 'restore', backup!, '--path', `${MIXTRAL}/${SHARD2}`], roots.env)
    expect(restore.code, restore.stdout + restore.stderr).toBe(0)
    expect((await citadel(['model', 'verify', 'mixtral'], roots.env)).code).toBe(0)
    const healed = await healthCheck(roots.env)
    expect(modelProblems(healed.report)).toEqual([])
    expect(healed.code).toBe(before.code)
  }, 120_000)

  it('warns on an unfinished download not written for over a day, naming it, its size and age; a fresh one is no problem', async () => {
    const roots = await setUpServer(NO_MODELS)
    const downloads = path.join(roots.models, 'downloads')
    writeFile(path.join(downloads, 'old.partial', 'model.safetensors'), Buffer.alloc(300_000, 1))
    writeFile(path.join(downloads, 'fresh.partial', 'config.json'), '{}')
    const twoDaysAgo = Date.now() / 1000 - 2 * DAY_S
    for (const p of ['old.partial/model.safetensors', 'old.partial']) utimesSync(path.join(downloads, p), twoDaysAgo, twoDaysAgo)

    const { report } = await healthCheck(roots.env)
    expect(modelProblems(report)).toEqual([{
      check: 'models', severity: 'warning', key: 'models:partial:old.partial',
      message: `downloads/old.partial holds 293 KiB of an unfinished download, last written 2d 0h ago: run the same citadel model fetch SOURCE --name old again to resume it, or delete ${path.join(downloads, 'old.partial')} if that model is no longer wanted`,
    }])
    expect(report.models.partials.map((p: { name: string; bytes: number }) => [p.name, p.bytes])).toEqual([['fresh.partial', 2], ['old.partial', 300_000]])
  }, 60_000)

  it('warns when archive/ and staging/ take more than STORAGE_MONITOR_ARCHIVE_WARNING of the model disk, naming both sizes and the disk', async () => {
    const roots = await setUpServer(NO_MODELS)
    writeFile(path.join(roots.models, 'archive', 'm-v1', 'weights.bin'), Buffer.alloc(3 << 20, 7))
    writeFile(path.join(roots.models, 'staging', 'm-v3', 'weights.bin'), Buffer.alloc(1 << 20, 7))
    const st = statfsSync(roots.models)
    const disk = st.blocks * st.bsize
    const share = (4 << 20) / disk
    // The temporary disk is large: thresholds either side of the real share prove the comparison, whatever its size.
    const above = await healthCheck({ ...roots.env, STORAGE_MONITOR_ARCHIVE_WARNING: (share * 2).toFixed(12) })
    expect(modelProblems(above.report)).toEqual([])
    const below = await healthCheck({ ...roots.env, STORAGE_MONITOR_ARCHIVE_WARNING: (share / 2).toFixed(12) })
    const [warning] = modelProblems(below.report)
    expect(warning).toMatchObject({ severity: 'warning', key: 'models:archive' })
    expect(warning!.message).toMatch(/^archive\/ \(3\.00 MiB\) and staging\/ \(1\.00 MiB\) use \S+ of the \S+ \S+ model disk, more than STORAGE_MONITOR_ARCHIVE_WARNING=\S+: remove the oldest archived versions with citadel model remove DIR/)
    expect(below.report.models).toMatchObject({ archive_bytes: 3 << 20, staging_bytes: 1 << 20, disk_bytes: disk })
    expect(below.code).toBeGreaterThanOrEqual(1)
  }, 60_000)

  it('weekly hashes the live models after the backups; a rotten shard fails that step only, the report is critical and names the backup made before the damage', async () => {
    const roots = await liveModel({ ...ONLY_MIXTRAL, BACKUP_VERIFY_SAMPLE_RATE: '1' })
    const [good] = backups(roots)
    const shard = path.join(roots.active, MIXTRAL, SHARD2)
    const bytes = readFileSync(shard)
    bytes[100] ^= 0x01
    writeFileSync(shard, bytes)
    const weekly = await citadel(['run', 'weekly', '--skip-tags', 'perf', '--json'], roots.env)
    const doc = JSON.parse(weekly.stdout)
    expect(weekly.code).not.toBe(0)
    const statuses = Object.fromEntries(doc.tasks.map((t: { name: string; status: string }) => [t.name, t.status]))
    expect(statuses).toMatchObject({ 'backup-verify': 'ok', 'model-verify': 'failed', 'backup-cleanup': 'ok', 'health-report': 'ok' })
    const health = JSON.parse(readFileSync(path.join(roots.app, 'state', 'health.json'), 'utf8'))
    // The weekly full backup copied the shard as it found it: the latest holds the damage, the one before does not.
    expect(backups(roots)).toHaveLength(2)
    expect(health.problems).toContainEqual(expect.objectContaining({ severity: 'critical', key: 'models:verify:mixtral', message: expect.stringContaining(`backup restore ${good} --path ${MIXTRAL}/${SHARD2}`) }))
    expect(health.models.aliases[0].last_verification).toMatchObject({ sample: false, ok: false })
    const restore = await citadel(['backup', 'restore', good!, '--path', `${MIXTRAL}/${SHARD2}`], roots.env)
    expect(restore.code, restore.stdout + restore.stderr).toBe(0)
    expect((await citadel(['model', 'verify', 'mixtral'], roots.env)).code).toBe(0)
  }, 120_000)

  it('status lists each alias with its directory, version age and last verification; the metrics carry them', async () => {
    const roots = await liveModel({ MODEL_REGISTRY: `mixtral=${MIXTRAL},yi34b=yi-34b-chat` })
    const status = await citadel(['status'], roots.env)
    expect(status.code).toBe(0)
    expect(status.stdout).toMatch(new RegExp(`\\nmodels   mixtral: ${MIXTRAL}, live \\S+ \\(by its link\\), verified \\S+ ago \\(full\\): ok\\n {9}yi34b: yi-34b-chat not in active/ yet\\n`))
    const json = JSON.parse((await citadel(['status', '--json'], roots.env)).stdout)
    expect(json.models.aliases.map((a: { alias: string; present: boolean }) => [a.alias, a.present])).toEqual([['mixtral', true], ['yi34b', false]])
    expect(json.models.aliases[0].live_since.source).toBe('link')

    // yi34b not fetched is a warning: the cycle exits with it.
    const once = await citadel(['monitor', '--once'], roots.env)
    expect(once.code, once.stdout + once.stderr).toBe(1)
    const prom = readFileSync(path.join(roots.app, 'metrics', 'citadel.prom'), 'utf8')
    for (const family of ['citadel_model_last_verification_timestamp_seconds', 'citadel_model_last_verification_success', 'citadel_model_files_failing', 'citadel_model_version_age_seconds', 'citadel_model_downloads_partial', 'citadel_model_downloads_partial_oldest_age_seconds', 'citadel_model_inactive_bytes']) {
      expect(prom).toContain(`# TYPE ${family} gauge\n`)
    }
    expect(prom).toContain(`citadel_model_last_verification_success{alias="mixtral",dir="${MIXTRAL}"} 1\n`)
    expect(prom).toContain(`citadel_model_files_failing{alias="mixtral",dir="${MIXTRAL}"} 0\n`)
    expect(prom).toContain('citadel_model_downloads_partial 0\n')
    expect(prom).not.toMatch(/^citadel_model_downloads_partial_oldest_age_seconds /m)
    expect(prom).not.toMatch(/alias="yi34b"/)
  }, 120_000)
})
