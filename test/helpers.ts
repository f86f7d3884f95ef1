// Shared by the tests: real temporary roots, the real citadel command in a child process, the same
// playbooks and tasks run in this process for set-up, and a snapshot of a tree precise enough to prove
// that nothing changed.
import { spawn, type ChildProcess } from 'node:child_process'
import { createHash } from 'node:crypto'
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterEach, expect } from 'vitest'
import type { RunReport } from '../lib/core/report.ts'

export const PROJECT = path.dirname(path.dirname(fileURLToPath(import.meta.url)))
export const CITADEL = path.join(PROJECT, 'bin', 'citadel.js')

export interface Roots {
  base: string
  app: string
  models: string
  backup: string
  active: string
  /**
   * Environment for a citadel child: these roots, an empty .env, nothing inherited from the caller. Units go
   * to <base>/systemd (not created here), never into /etc/systemd/system, whatever task a test runs.
   */
  env: Record<string, string>
}

const cleanups: (() => void)[] = []
afterEach(() => {
  for (const clean of cleanups.splice(0)) clean()
})

/** A fresh temporary base with the two disk roots (as mount points would be) and no app root yet. */
export function makeRoots(extraEnv: Record<string, string> = {}): Roots {
  const base = mkdtempSync(path.join(os.tmpdir(), 'citadel-test-'))
  cleanups.push(() => rmSync(base, { recursive: true, force: true }))
  const models = path.join(base, 'models')
  const backup = path.join(base, 'backup')
  mkdirSync(models)
  mkdirSync(backup)
  const envFile = path.join(base, 'test.env')
  writeFileSync(envFile, '')
  const app = path.join(base, 'app')
  return {
    base,
    app,
    models,
    backup,
    active: path.join(models, 'active'),
    env: {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: process.env.HOME ?? base,
      CITADEL_ENV_FILE: envFile,
      CITADEL_APP_ROOT: app,
      CITADEL_MODELS_ROOT: models,
      CITADEL_BACKUP_ROOT: backup,
      CITADEL_SYSTEMD_DIR: path.join(base, 'systemd'),
      ...extraEnv,
    },
  }
}

export interface Result { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }

export function start(args: string[], env: Record<string, string>, command: string[] = [process.execPath, CITADEL]): { child: ChildProcess; done: Promise<Result> } {
  const child = spawn(command[0]!, [...command.slice(1), ...args], { env, cwd: PROJECT, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout!.on('data', (d) => (stdout += d))
  child.stderr!.on('data', (d) => (stderr += d))
  const done = new Promise<Result>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })))
  return { child, done }
}

export const citadel = (args: string[], env: Record<string, string>) => start(args, env).done

export async function citadelJson(args: string[], env: Record<string, string>) {
  const result = await citadel([...args, '--json'], env)
  let doc: any
  try {
    doc = JSON.parse(result.stdout)
  } catch {
    throw new Error(`not JSON (exit ${result.code}):\n${result.stdout}\n${result.stderr}`)
  }
  return { ...result, doc }
}

export interface InProcessResult { code: number; report: RunReport | null }

/**
 * Runs a playbook (`['run', NAME]`) or a task (`['task', NAME]`, with `args` as its command line would give
 * them) here, in the test's process: the real tasks through the real runner (lock, journal, run log), with
 * the settings of `env`, printing nothing. For set-up that is not what a test is about: it saves a citadel
 * process start (half a second of CPU) per run, after loading the modules once per test file (about as much).
 * A test about a command's own behaviour uses citadel().
 */
export async function citadelHere([command, name]: ['run' | 'task', string], env: Record<string, string>, args: Record<string, string | boolean | string[]> = {}): Promise<InProcessResult> {
  const [{ run }, { loadSettings, SETTINGS }, { playbooks }, { tasks }, { playbookEntries, stepOf }, { parseTaskArgs }] = await Promise.all([
    import('../lib/core/runner.ts'), import('../lib/infra/config.ts'), import('../playbooks/index.ts'), import('../tasks/index.ts'),
    import('../lib/core/task.ts'), import('../lib/core/args.ts'),
  ])
  // Settings come from `env`; anything else in it would reach only a child process's commands (rsync, ssh,
  // smartctl), which here inherit this process's environment instead: such a test needs the real command.
  const foreign = Object.keys(env).filter((key) => !(key in SETTINGS) && key !== 'CITADEL_ENV_FILE' && env[key] !== process.env[key])
  if (foreign.length) throw new Error(`citadelHere: ${foreign.join(', ')} would not reach the commands a task runs in this process; use citadel() for this test`)
  const playbook = command === 'run' ? playbooks.find((p) => p.name === name) : null
  const task = command === 'task' ? tasks.find((t) => t.name === name || t.aliases?.[name]) : null
  if (!playbook && !task) throw new Error(`citadelHere: no ${command === 'run' ? 'playbook' : 'task'} named ${name}`)
  const steps = playbook ? playbookEntries(playbook) : [{ ...stepOf(task!, name), args: { ...stepOf(task!, name).args, ...args } }]
  const ready = steps.map((step) => {
    const parsed = parseTaskArgs(step.task.args, step.args)
    if ('problem' in parsed) throw new Error(`citadelHere: ${step.name}: ${parsed.problem}`)
    return { task: step.task, name: step.name, args: parsed.args, when: 'when' in step ? step.when : undefined, needs: 'needs' in step ? step.needs : [] }
  })
  let report: RunReport | null = null
  const code = await run({
    playbook: playbook?.name ?? null,
    onFailure: playbook?.onFailure ?? 'continue',
    tasks: ready,
    settings: loadSettings(env),
    check: false,
    diff: false,
    force: false,
    json: false,
    quiet: true,
    report: (doc) => (report = doc),
    command: ['citadel', command, name].join(' '),
  })
  return { code, report }
}

/** Runs initial-setup on `roots` in this process (see citadelHere); fails the test, saying why, unless it succeeds. */
export async function setUp(roots: Roots): Promise<void> {
  const { code, report } = await citadelHere(['run', 'initial-setup'], roots.env)
  expect(code, JSON.stringify(report?.tasks.filter((t) => t.status === 'failed'))).toBe(0)
}

/** Every entry below `dir`: kind, mode, owner, link text, content hash and, for directories, mtime. */
export function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {}
  const walk = (p: string) => {
    const st = lstatSync(p)
    const rel = path.relative(dir, p) || '.'
    const head = `${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid}`
    if (st.isSymbolicLink()) out[rel] = `link ${head} -> ${readlinkSync(p)}`
    else if (st.isFile()) out[rel] = `file ${head} ${createHash('sha256').update(readFileSync(p)).digest('hex')}`
    else if (st.isDirectory()) {
      out[rel] = `dir ${head} mtime=${st.mtimeMs}`
      for (const name of readdirSync(p)) walk(path.join(p, name))
    } else out[rel] = `other ${head}`
  }
  walk(dir)
  return out
}

/** Relative paths below `dir` with their kind, and link targets: the shape of a tree. */
export function tree(dir: string): string[] {
  return Object.entries(snapshot(dir)).map(([rel, desc]) => {
    const kind = desc.split(' ')[0]
    return kind === 'link' ? `${rel} -> ${desc.split(' -> ')[1]}` : `${rel} (${kind})`
  }).sort()
}
