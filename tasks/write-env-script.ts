// Ensures <app root>/configs/storage-env.sh exports the storage paths vLLM needs. Every value is
// single-quoted, so sourcing it runs nothing; `bash -n` checks it before it is published by rename,
// and it is rewritten only when its content changes.
import path from 'node:path'
import { describeEntry, lstatOrNull, readFileOrNull } from '../lib/infra/fsx.ts'
import { envScriptPath, hfHome, vllmCache } from '../lib/infra/layout.ts'
import { envNameOfAlias, type Settings } from '../lib/infra/config.ts'
import { shellQuote } from '../lib/infra/quote.ts'
import { defineTask, runWhenMain } from '../lib/core/task.ts'

export function envScript(s: Settings): string {
  const vars: [string, string][] = [
    ['CITADEL_APP_ROOT', s.appRoot],
    ['CITADEL_MODELS_ROOT', s.modelsRoot],
    ['CITADEL_MODELS_ACTIVE', s.modelsActive],
    ['CITADEL_BACKUP_ROOT', s.backupRoot],
    ...s.models.map((m): [string, string] => [envNameOfAlias(m.alias), path.join(s.modelsActive, m.dir)]),
    ['HF_HOME', hfHome(s)],
    ['HF_HUB_CACHE', `${hfHome(s)}/hub`],
    ['VLLM_CACHE_ROOT', vllmCache(s)],
  ]
  return [
    '# Written by citadel (task write-env-script); edit the settings and rerun it instead of this file.',
    '# Source it before starting vLLM.',
    ...vars.map(([name, value]) => `export ${name}=${shellQuote(value)}`),
    '',
  ].join('\n')
}

const task = defineTask({
  name: 'write-env-script',
  description: 'Write configs/storage-env.sh with the model paths, HF_HOME, HF_HUB_CACHE and VLLM_CACHE_ROOT',
  tags: ['setup', 'config'],
  async run(ctx) {
    const file = envScriptPath(ctx.settings)
    const st = await lstatOrNull(file)
    if (st && !st.isFile()) return ctx.fail(`${file} is ${describeEntry(st)}, expected the generated script: move it away and rerun`)
    const wanted = envScript(ctx.settings)
    const current = st ? await readFileOrNull(file) : null
    if (current === wanted) return ctx.finish(`${file} is up to date`)
    const syntax = await ctx.$({ input: wanted, nothrow: true })`bash -n`
    if (syntax.exitCode !== 0) return ctx.fail(`generated script does not parse (bash -n: ${syntax.stderr.trim()}); nothing written`)
    await ctx.ensureFile(file, wanted, 0o644)
    return ctx.finish(`${file} ${ctx.check ? 'would be ' : ''}${current === null ? 'written' : 'updated'}`)
  },
})

export default task
runWhenMain(import.meta)
