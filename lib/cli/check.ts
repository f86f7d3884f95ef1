// `citadel check`: the one command to run after editing a task or playbook on a host. It judges the sources
// on disk, not the build this process runs from (which may be the last good one, see bin/citadel.js): do
// they build, does every task and playbook load and sit in its index, and do they type-check.
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import os from 'node:os'
import path from 'node:path'
import { projectRoot } from '../infra/fsx.ts'
import { makeShell } from '../infra/shell.ts'
import { argFields, parseTaskArgs } from '../core/args.ts'
import type { Playbook, Task } from '../core/task.ts'
import { count } from '../infra/format.ts'

interface Finding { step: 'build' | 'load' | 'types'; line: string }

/** esbuild's errors as `file:line:column: text`. */
const located = (err: { errors?: { text: string; location?: { file: string; line: number; column: number } | null }[] }): string[] =>
  (err.errors ?? []).map((e) => (e.location ? `${e.location.file}:${e.location.line}:${e.location.column}: ${e.text}` : e.text))

/** Bundles the task and playbook indexes afresh from the sources and loads them. */
async function loadSources(root: string): Promise<{ tasks: Task[]; playbooks: Playbook[] } | Finding[]> {
  // From the checkout's node_modules: this bundle runs from a cache directory that has none.
  const { build } = createRequire(path.join(root, 'package.json'))('esbuild') as typeof import('esbuild')
  const dir = mkdtempSync(path.join(os.tmpdir(), 'citadel-check-'))
  try {
    const outfile = path.join(dir, 'indexes.cjs')
    try {
      await build({
        absWorkingDir: root,
        stdin: { contents: "export { tasks } from './tasks/index.ts'\nexport { playbooks } from './playbooks/index.ts'\n", resolveDir: root, loader: 'ts', sourcefile: 'indexes.ts' },
        outfile, bundle: true, format: 'cjs', platform: 'node', target: 'node20', external: ['esbuild', 'tsx'], logLevel: 'silent',
        define: { __CITADEL_CHECKOUT__: JSON.stringify(root) },
      })
    } catch (err) {
      return located(err as Parameters<typeof located>[0]).map((line) => ({ step: 'build', line }))
    }
    try {
      // CommonJS and require, like the launcher's own bundle: that bundle runs as a compiled script, which
      // has no dynamic import() without an experimental flag.
      return createRequire(outfile)(outfile) as { tasks: Task[]; playbooks: Playbook[] }
    } catch (err) {
      return [{ step: 'load', line: `loading the tasks and playbooks threw: ${(err as Error).stack?.split('\n').slice(0, 3).join(' ') ?? String(err)}` }]
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/** Each file in `dir` is in its index under its own name, and each name in the index has its file. */
function registryFindings(root: string, dir: 'tasks' | 'playbooks', names: string[]): Finding[] {
  const files = readdirSync(path.join(root, dir)).filter((f) => f.endsWith('.ts') && f !== 'index.ts').map((f) => f.slice(0, -3))
  return [
    ...files.filter((f) => !names.includes(f)).map((f) => ({ step: 'load' as const, line: `${dir}/${f}.ts: not registered in ${dir}/index.ts (or its name is not ${f})` })),
    ...names.filter((n) => !files.includes(n)).map((n) => ({ step: 'load' as const, line: `${dir}/index.ts: ${n} has no file ${dir}/${n}.ts` })),
  ]
}

async function typeFindings(root: string): Promise<Finding[] | null> {
  const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc')
  if (!existsSync(tsc)) return null
  const out = await makeShell(() => {})({ nothrow: true, cwd: root })`${process.execPath} ${tsc} --noEmit -p ${root} --pretty false`
  return out.stdout.split('\n').flatMap((l) => {
    const m = /^(.+)\((\d+),(\d+)\): error (TS\d+): (.*)$/.exec(l)
    return m ? [{ step: 'types' as const, line: `${m[1]}:${m[2]}:${m[3]}: ${m[5]} (${m[4]})` }] : []
  })
}

export async function checkSources(): Promise<number> {
  const root = projectRoot()
  const findings: Finding[] = []
  const loaded = await loadSources(root)
  let summary = 'not loaded'
  if (Array.isArray(loaded)) findings.push(...loaded)
  else {
    const taskNames = loaded.tasks.map((t) => t.name)
    findings.push(...registryFindings(root, 'tasks', taskNames), ...registryFindings(root, 'playbooks', loaded.playbooks.map((p) => p.name)))
    for (const p of loaded.playbooks)
      for (const step of p.tasks) {
        const task = 'task' in step ? step.task : step
        const name = 'task' in step && step.name !== undefined ? step.name : task.name
        const preset = name === task.name ? {} : task.aliases?.[name]
        if (!taskNames.includes(task.name)) findings.push({ step: 'load', line: `playbooks/${p.name}.ts: step ${task.name} is not a registered task` })
        else if (!preset) findings.push({ step: 'load', line: `playbooks/${p.name}.ts: step ${name} is neither ${task.name} nor one of its aliases` })
        else {
          const parsed = 'task' in step && step.args ? parseTaskArgs(task.args, { ...preset, ...step.args }) : {}
          if ('problem' in parsed) findings.push({ step: 'load', line: `playbooks/${p.name}.ts: step ${name}: ${parsed.problem}` })
        }
      }
    for (const t of loaded.tasks) {
      try {
        argFields(t.args)
      } catch (err) {
        findings.push({ step: 'load', line: `tasks/${t.name}.ts: ${(err as Error).message}` })
      }
    }
    summary = `${count(loaded.tasks.length, 'task')} and ${count(loaded.playbooks.length, 'playbook')} load`
  }
  if (process.stderr.isTTY) process.stderr.write('citadel check: type-checking with tsc (some seconds)...\n')
  const types = await typeFindings(root)
  if (types) findings.push(...types)
  const lines = [`citadel check: the sources in ${root}`]
  const of = (step: Finding['step']) => findings.filter((f) => f.step === step)
  lines.push(`  build  ${of('build').length ? count(of('build').length, 'error') : 'ok'}`, ...of('build').map((f) => `    ${f.line}`))
  lines.push(`  load   ${of('load').length ? count(of('load').length, 'problem') : summary}`, ...of('load').map((f) => `    ${f.line}`))
  lines.push(`  types  ${types === null ? 'NOT CHECKED: typescript is not installed here (npm ci --omit=dev); check on a checkout with the dev dependencies' : of('types').length ? count(of('types').length, 'error') : 'ok'}`, ...of('types').map((f) => `    ${f.line}`))
  lines.push(findings.length ? `${count(findings.length, 'problem')}: fix them and run citadel check again` : 'all good')
  process.stdout.write(lines.join('\n') + '\n')
  return findings.length ? 2 : 0
}
