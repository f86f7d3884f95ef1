import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { citadelJson, makeRoots } from '../helpers.ts'

const HOSTILE = `it's "q" $(touch PWNED1) \`touch PWNED2\` $HOME \\ \n next line`

describe('storage-env.sh', () => {
  it('gives back exactly the configured values when paths and names are hostile, and runs nothing', async () => {
    const plain = makeRoots()
    const base = path.join(plain.base, HOSTILE)
    const [app, models, backup] = ['app ' + HOSTILE, 'models ' + HOSTILE, 'backup ' + HOSTILE].map((n) => path.join(base, n)) as [string, string, string]
    mkdirSync(models, { recursive: true })
    mkdirSync(backup, { recursive: true })
    const modelDir = `model ${HOSTILE}`
    const env = { ...plain.env, CITADEL_APP_ROOT: app, CITADEL_MODELS_ROOT: models, CITADEL_BACKUP_ROOT: backup, MODEL_REGISTRY: `weird-one=${modelDir},plain=plain` }

    const result = await citadelJson(['run', 'initial-setup'], env)
    expect(result.code, result.stderr + result.stdout).toBe(0)
    const script = path.join(app, 'configs', 'storage-env.sh')
    execFileSync('bash', ['-n', script])

    const names = ['CITADEL_APP_ROOT', 'CITADEL_MODELS_ROOT', 'CITADEL_MODELS_ACTIVE', 'CITADEL_BACKUP_ROOT', 'CITADEL_MODEL_WEIRD_ONE', 'CITADEL_MODEL_PLAIN', 'HF_HOME', 'HF_HUB_CACHE', 'VLLM_CACHE_ROOT']
    const printed = execFileSync('bash', ['-c', `set -eu; . "$1"; printf '%s\\0' ${names.map((n) => `"$${n}"`).join(' ')}`, 'bash', script], { cwd: plain.base, env: { PATH: process.env.PATH! } })
      .toString()
      .split('\0')
      .slice(0, -1)
    const active = path.join(models, 'active')
    expect(Object.fromEntries(names.map((n, i) => [n, printed[i]]))).toEqual({
      CITADEL_APP_ROOT: app,
      CITADEL_MODELS_ROOT: models,
      CITADEL_MODELS_ACTIVE: active,
      CITADEL_BACKUP_ROOT: backup,
      CITADEL_MODEL_WEIRD_ONE: path.join(active, modelDir),
      CITADEL_MODEL_PLAIN: path.join(active, 'plain'),
      HF_HOME: path.join(models, 'cache', 'huggingface'),
      HF_HUB_CACHE: path.join(models, 'cache', 'huggingface', 'hub'),
      VLLM_CACHE_ROOT: path.join(models, 'cache', 'vllm'),
    })
    for (const dir of [plain.base, base, process.cwd()]) {
      expect(existsSync(path.join(dir, 'PWNED1'))).toBe(false)
      expect(existsSync(path.join(dir, 'PWNED2'))).toBe(false)
    }
  })

  it('is rewritten only when its content changes, with the old and new content in the diff', async () => {
    const roots = makeRoots()
    await citadelJson(['run', 'initial-setup'], roots.env)
    const again = await citadelJson(['task', 'write-env-script'], roots.env)
    expect(again.doc.tasks[0].status).toBe('ok')
    const changed = await citadelJson(['task', 'write-env-script'], { ...roots.env, MODEL_REGISTRY: 'qwen=qwen2-72b' })
    const change = changed.doc.tasks[0].changes[0]
    expect(change.action).toBe('update file')
    expect(change.before).toContain('CITADEL_MODEL_MIXTRAL')
    expect(change.after).toContain(`export CITADEL_MODEL_QWEN='${path.join(roots.active, 'qwen2-72b')}'`)
    expect(readFileSync(path.join(roots.app, 'configs', 'storage-env.sh'), 'utf8')).toBe(change.after)
  })
})
