// <app root>/configs/storage-env.sh, which vLLM sources for the model paths: written by write-env-script,
// and again by a restore, so that both write the same file by the same rules.
import path from 'node:path'
import type { TaskContext } from '../core/task.ts'
import { envNameOfAlias, type Settings } from '../infra/config.ts'
import { describeEntry, lstatOrNull, readFileOrNull } from '../infra/fsx.ts'
import { envScriptPath, hfHome, vllmCache } from '../infra/layout.ts'
import { shellQuote } from '../infra/quote.ts'

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

// Comment lines and `export NAME=` lines whose values are runs of '...' and \' only: what shellQuote makes,
// and a form in which bash expands nothing, so sourcing it runs nothing. Checked in-process: spawning
// `bash -n` for it cost a promote two shell starts, and proved less (that it parses, not that it is inert).
const INERT_SCRIPT = /^(?:#[^\n]*\n|export [A-Za-z_][A-Za-z0-9_]*=(?:'[^']*'|\\')+\n)*$/

/**
 * Ensures the script holds what the settings say: every value single-quoted, so sourcing it runs nothing,
 * which is checked before it is published by rename; rewritten only when its content changes. Returns
 * what it did in a few words; throws one line when something else stands there or it is not inert.
 */
export async function ensureEnvScript(ctx: TaskContext): Promise<string> {
  const file = envScriptPath(ctx.settings)
  const st = await lstatOrNull(file)
  if (st && !st.isFile()) throw new Error(`${file} is ${describeEntry(st)}, expected the generated script: move it away and rerun`)
  const wanted = envScript(ctx.settings)
  const current = st ? await readFileOrNull(file) : null
  if (current === wanted) return `${file} is up to date`
  if (!INERT_SCRIPT.test(wanted)) throw new Error(`generated script is not only comments and single-quoted exports (a bug in citadel, please report it); nothing written`)
  await ctx.ensureFile(file, wanted, 0o644)
  return `${file} ${ctx.check ? 'would be ' : ''}${current === null ? 'written' : 'updated'}`
}
