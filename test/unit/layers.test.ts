// The house has one import direction: cli → tasks/playbooks → domain → core → infra. This walks every import
// (static, type-only and dynamic) of lib/, tasks/ and playbooks/ and fails on an arrow against it or a cycle,
// so a newcomer can trust the folder names to say what may use what.
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { globby } from 'globby'
import { describe, expect, it } from 'vitest'
import { PROJECT } from '../helpers.ts'

const RANK: Record<string, number> = { infra: 1, core: 2, links: 3, backup: 3, health: 3, models: 3, monitor: 3, systemd: 3, tasks: 4, playbooks: 5, cli: 6 }
/** The domains that may use another domain; any other arrow between domains is a tangle. */
const DOMAIN_USES: Record<string, string[]> = { monitor: ['health', 'links'], health: ['backup', 'links', 'models'], models: ['backup', 'links'] }

const layerOf = (file: string): string => {
  const [top, sub] = file.split('/')
  return top === 'lib' ? sub! : top!
}

/** Static, type-only, re-export and dynamic imports of relative paths; packages are not the house's. */
const relativeImports = (text: string): string[] =>
  [...text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^'"\n]*?(?:\n[^'"\n]*?)*?from\s+['"]([^'"]+)['"]|\bimport\(\s*['"]([^'"]+)['"]\s*\)/g)]
    .map((m) => m[1] ?? m[2]!)
    .filter((s) => s.startsWith('.'))

async function importGraph(): Promise<Map<string, string[]>> {
  const files = await globby(['lib/**/*.{ts,js}', 'tasks/*.ts', 'playbooks/*.ts'], { cwd: PROJECT })
  const graph = new Map<string, string[]>()
  for (const file of files) {
    const text = readFileSync(path.join(PROJECT, file), 'utf8')
    const specs = relativeImports(text)
    graph.set(file, specs.map((s) => path.normalize(path.join(path.dirname(file), s))))
  }
  return graph
}

describe('layers', () => {
  it('sees every kind of import the walk relies on', () => {
    const sample = [
      "import { a } from './a.ts'",
      "import type { B } from '../core/b.ts'",
      'import {\n  c,\n  d,\n} from "./cd.ts"',
      "export { e } from './e.ts'",
      "const f = await import('../../tasks/f.ts')",
      "import { z } from 'zod'",
    ].join('\n')
    expect(relativeImports(sample)).toEqual(['./a.ts', '../core/b.ts', './cd.ts', './e.ts', '../../tasks/f.ts'])
  })

  it('every import points down the layers: cli → tasks/playbooks → domain → core → infra', async () => {
    const graph = await importGraph()
    expect(graph.size).toBeGreaterThan(50)
    const against: string[] = []
    for (const [file, targets] of graph) {
      const from = layerOf(file)
      expect(RANK[from], `${file}: lib/${from} is not a known layer`).toBeDefined()
      for (const target of targets) {
        const to = layerOf(target)
        if (from === to) continue
        const fine = RANK[from]! > RANK[to]! && (RANK[from] !== 3 || RANK[to] !== 3) || (DOMAIN_USES[from] ?? []).includes(to)
        if (!fine) against.push(`${file} → ${target}`)
      }
    }
    expect(against).toEqual([])
  })

  it('no module reaches itself through its imports', async () => {
    const graph = await importGraph()
    const cycles: string[] = []
    const state = new Map<string, 'open' | 'done'>()
    const visit = (file: string, trail: string[]) => {
      if (state.get(file) === 'done') return
      if (state.get(file) === 'open') {
        cycles.push([...trail.slice(trail.indexOf(file)), file].join(' → '))
        return
      }
      state.set(file, 'open')
      for (const next of graph.get(file) ?? []) visit(next, [...trail, file])
      state.set(file, 'done')
    }
    for (const file of graph.keys()) visit(file, [])
    expect(cycles).toEqual([])
  })
})
