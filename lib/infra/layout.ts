// The storage tree citadel keeps, derived from the settings: which directories exist and which links
// point where. Tasks read this one description instead of spelling paths themselves.
import path from 'node:path'
import type { Settings } from './config.ts'

export interface ExpectedLink {
  /** The link's own path. */
  path: string
  /** Where it must point (absolute). */
  target: string
  /** A model's convenience link: its target is a model directory that may not be downloaded yet. */
  model?: string
}

export function modelsRootDirs(s: Settings): string[] {
  const sub = (...parts: string[]) => path.join(s.modelsRoot, ...parts)
  return [s.modelsActive, sub('archive'), sub('downloads'), sub('cache'), sub('cache', 'huggingface'), sub('cache', 'vllm'), sub('staging')]
}

export function expectedDirs(s: Settings): string[] {
  const app = (name: string) => path.join(s.appRoot, name)
  return [
    ...modelsRootDirs(s),
    path.join(s.backupRoot, 'models'),
    path.join(s.backupRoot, 'system'),
    s.appRoot,
    app('configs'),
    app('logs'),
    app('model-links'),
    app('state'),
    app('metrics'),
  ]
}

export function expectedLinks(s: Settings): ExpectedLink[] {
  return [
    { path: path.join(s.appRoot, 'models'), target: s.modelsActive },
    { path: path.join(s.appRoot, 'downloads'), target: path.join(s.modelsRoot, 'downloads') },
    { path: path.join(s.appRoot, 'staging'), target: path.join(s.modelsRoot, 'staging') },
    ...s.models.map((m) => ({ path: path.join(s.appRoot, 'model-links', m.alias), target: path.join(s.modelsActive, m.dir), model: m.alias })),
  ]
}

/** The variable storage-env.sh exports for a model: CITADEL_MODEL_<ALIAS>, '-' as '_'. */
export const envScriptPath = (s: Settings) => path.join(s.appRoot, 'configs', 'storage-env.sh')
export const hfHome = (s: Settings) => path.join(s.modelsRoot, 'cache', 'huggingface')
export const vllmCache = (s: Settings) => path.join(s.modelsRoot, 'cache', 'vllm')
export const stateDir = (s: Settings) => path.join(s.appRoot, '.citadel')
export const logsDir = (s: Settings) => path.join(s.appRoot, 'logs')
/** Where health results live between runs: the monitor's health.json and state, perf history. */
export const healthDir = (s: Settings) => path.join(s.appRoot, 'state')
export const healthFile = (s: Settings) => path.join(healthDir(s), 'health.json')
/** The monitor's own state: its conditions across restarts and its last SMART reading. */
export const monitorStateFile = (s: Settings) => path.join(healthDir(s), 'monitor.json')
export const perfHistoryFile = (s: Settings) => path.join(healthDir(s), 'perf-history.jsonl')
