#!/usr/bin/env node
// A self-contained demo: lays out ./demo/ as a small server (app root, model disk, backup disk, two tiny
// sample models), runs the initial-setup playbook against it, makes and verifies a full and an incremental
// backup, deletes one model and restores it from the backup, then shows the morning glance and the health
// report. No root, no real disks.
import { spawnSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const project = path.dirname(path.dirname(fileURLToPath(import.meta.url)))
const demo = path.resolve(process.env.CITADEL_DEMO_DIR ?? path.join(project, 'demo'))
const again = existsSync(demo)
const roots = { app: path.join(demo, 'opt-citadel'), models: path.join(demo, 'mnt-citadel-models'), backup: path.join(demo, 'mnt-citadel-backup') }

if (!again) {
  mkdirSync(roots.app, { recursive: true })
  mkdirSync(roots.backup, { recursive: true })
  for (const model of ['mixtral-8x7b-instruct', 'yi-34b-chat']) {
    const dir = path.join(roots.models, 'active', model)
    mkdirSync(dir, { recursive: true })
    writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ model_type: model.split('-')[0], demo: true }, null, 2) + '\n')
    writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify({ version: '1.0', demo: true }) + '\n')
    writeFileSync(path.join(dir, 'model-00001-of-00001.safetensors'), randomBytes(256 * 1024))
  }
  writeFileSync(
    path.join(demo, '.env'),
    [
      '# Settings of the demo; see .env.example for every setting.',
      `CITADEL_APP_ROOT=${roots.app}`,
      `CITADEL_MODELS_ROOT=${roots.models}`,
      `CITADEL_BACKUP_ROOT=${roots.backup}`,
      'MODEL_REGISTRY=mixtral=mixtral-8x7b-instruct,yi34b=yi-34b-chat',
      '',
    ].join('\n'),
  )
}

for (const [tool, pkg] of [['rsync', 'rsync'], ['sha256sum', 'coreutils']]) {
  const found = (process.env.PATH ?? '').split(path.delimiter).some((dir) => dir && existsSync(path.join(dir, tool)))
  if (!found) console.log(`note: ${tool} is not installed, so verify-prereq will fail: install the ${pkg} package (apt-get install ${pkg})\n`)
}
const env = { ...process.env, CITADEL_ENV_FILE: path.join(demo, '.env') }
for (const name of Object.keys(env)) if (/^(CITADEL_(?!ENV_FILE)|MODEL_|SYMLINK_|STORAGE_MONITOR_|BACKUP_)/.test(name)) delete env[name]
console.log(again ? 'demo/ exists: running it again (initial-setup should report changed=0; rm -rf demo to start over)' : 'Created demo/ with an app root, a model disk, a backup disk and two sample models.')
const rel = (p) => path.relative(process.cwd(), p) || '.'
const citadel = (...args) => {
  console.log(`\n$ citadel ${args.join(' ')}`)
  return spawnSync(process.execPath, [path.join(project, 'bin', 'citadel.js'), ...args], { env, stdio: 'inherit' }).status ?? 1
}
/** Each file of a model directory with its sha256: what the restore must give back. */
const fingerprint = (dir) => readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile())
  .map((e) => `${path.relative(dir, path.join(e.parentPath, e.name))} ${createHash('sha256').update(readFileSync(path.join(e.parentPath, e.name))).digest('hex')}`).sort().join('\n')
const victim = path.join(roots.models, 'active', 'yi-34b-chat')
let before = ''
// The main job: lay out the server, then back the models up twice (the second time only what changed
// is copied) and check every byte of both backups against their manifests; then lose a model and get it back.
const steps = [
  () => citadel('run', 'initial-setup', ...process.argv.slice(2)),
  () => citadel('backup', 'create', '--type', 'full'),
  () => citadel('backup', 'verify', '--sample', '1'),
  () => {
    const config = path.join(roots.models, 'active', 'yi-34b-chat', 'generation_config.json')
    writeFileSync(config, JSON.stringify({ temperature: 0.7, written: new Date().toISOString() }) + '\n')
    console.log(`\n(changed ${rel(config)}, so the incremental backup copies one file and hard-links the rest)`)
    return citadel('backup', 'create', '--type', 'incremental')
  },
  () => citadel('backup', 'verify', '--sample', '1'),
  () => citadel('backup', 'status'),
  () => {
    before = fingerprint(victim)
    rmSync(victim, { recursive: true })
    console.log(`\n(deleted ${rel(victim)}, as a stray rm -rf would; first ask what a restore would do, then do it:`)
    console.log(' it is built beside the active models, every byte checked against the manifest, then renamed into place)')
    return citadel('backup', 'restore', '--model', 'yi34b', '--check')
  },
  () => citadel('backup', 'restore', '--model', 'yi34b'),
  () => {
    const same = existsSync(victim) && fingerprint(victim) === before
    console.log(same ? `\n(${rel(victim)} is back: every file has the sha256 it had before)` : `\n${rel(victim)} did not come back as it was`)
    return same ? 0 : 1
  },
  () => citadel('status'),
  () => {
    // health-check exits as monitoring plugins do: 1 or 2 is its verdict (this machine's own disk may be
    // fuller than the 80% warning), not a failure of the demo.
    const code = citadel('health-check', '--json')
    console.log(`(exit ${code}: 0 ok, 1 warning, 2 critical, 3 unknown)`)
    return code === 3 ? code : 0
  },
  () => {
    const code = citadel('monitor', '--once')
    return code === 3 ? code : 0
  },
]
let status = 0
for (const step of steps) if ((status = step()) !== 0) break
console.log(`
Where to look:
  ${rel(roots.app)}/models -> the active models on the model disk; model-links/ holds one link per model
  ${rel(roots.app)}/configs/storage-env.sh   what vLLM sources (. ${rel(roots.app)}/configs/storage-env.sh)
  ${rel(roots.app)}/logs/                    JSON lines of every run
  ${rel(roots.backup)}/models/           backups: data/, SHA256SUMS, backup.json; latest -> the newest
  ${rel(roots.models)}/archive/         what a restore replaced (a damaged model directory), kept until you delete it
  ${rel(roots.app)}/state/health.json        the last health report; metrics/citadel.prom for Prometheus
Try next:
  CITADEL_ENV_FILE=${rel(demo)}/.env npx citadel task verify-symlinks
  CITADEL_ENV_FILE=${rel(demo)}/.env npx citadel run initial-setup --check --diff
  CITADEL_ENV_FILE=${rel(demo)}/.env npx citadel backup verify --sample 0.1   (a different tenth each run)
  CITADEL_ENV_FILE=${rel(demo)}/.env npx citadel backup restore --drill        (restore one model into scratch, verify, remove)
  CITADEL_ENV_FILE=${rel(demo)}/.env npx citadel monitor --interval 5          (Ctrl-C stops it; rm a link to see a repair)
  CITADEL_ENV_FILE=${rel(demo)}/.env npx citadel perf ${rel(roots.models)} --quick`)
process.exit(status)
