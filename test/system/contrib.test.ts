// What ships for Prometheus and Grafana: the alert rules pass promtool's check and its unit tests (each
// alert fires on the series it should and stays silent on a healthy host), and every metric the rules and
// the dashboard query is one citadel's monitor really writes, so a renamed metric cannot silently empty a
// panel or mute an alert.
import { spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { backUp, setUpServer } from '../backup-helpers.ts'
import { citadel, PROJECT } from '../helpers.ts'

const promtool = spawnSync('promtool', ['--version']).status === 0
const NO_PROMTOOL = 'promtool is not installed (Debian package prometheus)'
const rulesDir = path.join(PROJECT, 'contrib', 'prometheus')
const dashboardFile = path.join(PROJECT, 'contrib', 'grafana', 'citadel-dashboard.json')

/** The citadel_* names in PromQL expressions. */
const namesIn = (exprs: string[]) => new Set(exprs.flatMap((e) => e.match(/\bcitadel_[a-z0-9_]+/g) ?? []))

function dashboardExprs(): string[] {
  const dashboard = JSON.parse(readFileSync(dashboardFile, 'utf8'))
  const panels = dashboard.panels.flatMap((p: any) => [p, ...(p.panels ?? [])])
  const exprs: string[] = panels.flatMap((p: any) => (p.targets ?? []).map((t: any) => t.expr))
  for (const v of dashboard.templating.list) if (typeof v.definition === 'string') exprs.push(v.definition)
  return exprs
}

const rulesExprs = () => [...readFileSync(path.join(rulesDir, 'citadel.rules.yml'), 'utf8').matchAll(/^\s*expr: (.*)$/gm)].map((m) => m[1]!)

describe('contrib: alert rules and dashboard', () => {
  it('promtool checks the rules and their unit tests pass', (ctx) => {
    if (!promtool) return ctx.skip(NO_PROMTOOL)
    const check = spawnSync('promtool', ['check', 'rules', 'citadel.rules.yml'], { cwd: rulesDir, encoding: 'utf8' })
    expect(check.status, check.stdout + check.stderr).toBe(0)
    const test = spawnSync('promtool', ['test', 'rules', 'citadel.rules.test.yml'], { cwd: rulesDir, encoding: 'utf8' })
    expect(test.status, test.stdout + test.stderr).toBe(0)
    // Every alert has a test that expects it to fire.
    const alerts = [...readFileSync(path.join(rulesDir, 'citadel.rules.yml'), 'utf8').matchAll(/- alert: (\w+)/g)].map((m) => m[1])
    const tests = readFileSync(path.join(rulesDir, 'citadel.rules.test.yml'), 'utf8')
    for (const alert of alerts) expect(tests, alert).toMatch(new RegExp(`alertname: ${alert}\\n\\s+exp_alerts:\\n\\s+- exp_labels`))
  })

  it('queries only metrics the monitor writes: checked against a textfile from monitor --once', async () => {
    const roots = await setUpServer({ MODEL_REGISTRY: '' })
    await backUp(roots, { 'm/a.bin': 'a' })
    const once = await citadel(['monitor', '--once'], roots.env)
    expect(once.code, once.stdout + once.stderr).toBe(0)
    const written = new Set([...readFileSync(path.join(roots.app, 'metrics', 'citadel.prom'), 'utf8').matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]))
    expect(written.size).toBeGreaterThan(20)
    const dashboard = namesIn(dashboardExprs())
    const rules = namesIn(rulesExprs())
    expect(dashboard.size).toBeGreaterThan(15)
    expect(rules.size).toBeGreaterThan(5)
    expect([...dashboard].filter((n) => !written.has(n)), 'dashboard metrics the monitor does not write').toEqual([])
    expect([...rules].filter((n) => !written.has(n)), 'rule metrics the monitor does not write').toEqual([])
  })
})
