// The reference in docs/ comes from the code, and the code's schemas describe what citadel really prints
// and keeps: a stale generated file, a link to nowhere, or an output of another shape than its schema fails here.
import { existsSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { globby } from 'globby'
import { describe, expect, it } from 'vitest'
import type { z } from 'zod'
import { backupStatusReportSchema, generatedDocs, REFRESH } from '../../scripts/docs.ts'
import { runReportSchema } from '../../lib/core/report.ts'
import { healthReportSchema } from '../../lib/health/health.ts'
import { monitorStateSchema } from '../../lib/monitor/monitor.ts'
import { backupMetaSchema, catalogSchema, verifyStateSchema } from '../../lib/infra/schemas.ts'
import { backUp, setUpServer, storeOf } from '../backup-helpers.ts'
import { citadel, citadelJson, PROJECT } from '../helpers.ts'

/** The first issue of `value` against `schema`, as a line naming where it is; null when it fits. */
function misfit(schema: z.ZodType, value: unknown): string | null {
  const parsed = schema.safeParse(value)
  if (parsed.success) return null
  const issue = parsed.error.issues[0]!
  return `${issue.path.join('.') || '(top)'}: ${issue.message}`
}

const readJson = (file: string): unknown => JSON.parse(readFileSync(file, 'utf8'))

describe('generated reference', () => {
  it(`every generated file is as ${REFRESH} writes it`, () => {
    const stale: string[] = []
    for (const [file, content] of generatedDocs()) {
      const full = path.join(PROJECT, file)
      if (!existsSync(full) || readFileSync(full, 'utf8') !== content) stale.push(file)
    }
    expect(stale, `stale: ${stale.join(', ')}; run ${REFRESH} and commit the result`).toEqual([])
  })

  it('lists every change action and every setting', () => {
    const docs = generatedDocs()
    expect(docs.get('docs/json.md')).toContain('| `create incremental backup` |')
    expect(docs.get('docs/settings.md')).toContain('| `BACKUP_REMOTE_BANDWIDTH_LIMIT` | `0` |')
  })
})

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens. */
const anchorOf = (heading: string) => heading.trim().toLowerCase().replace(/[^\p{L}\p{N} _-]/gu, '').replaceAll(' ', '-')

describe('links between the documents', () => {
  it('every relative link in README, CONTRIBUTING and docs/ points at a file (and heading) that exists', async () => {
    const pages = await globby(['README.md', 'CONTRIBUTING.md', 'docs/**/*.md', 'ansible/README.md'], { cwd: PROJECT })
    expect(pages).toContain('docs/backups.md')
    const broken: string[] = []
    for (const page of pages) {
      const text = readFileSync(path.join(PROJECT, page), 'utf8').replace(/```[\s\S]*?```/g, '')
      for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        if (/^[a-z]+:/i.test(target!)) continue
        const [file, anchor] = target!.split('#') as [string, string | undefined]
        const resolved = file === '' ? page : path.normalize(path.join(path.dirname(page), file))
        const full = path.join(PROJECT, resolved)
        if (!existsSync(full)) {
          broken.push(`${page}: ${target} (no ${resolved})`)
          continue
        }
        if (anchor && resolved.endsWith('.md')) {
          const headings = [...readFileSync(full, 'utf8').matchAll(/^#{1,6} (.+)$/gm)].map((m) => anchorOf(m[1]!))
          if (!headings.includes(anchor)) broken.push(`${page}: ${target} (no heading #${anchor} in ${resolved})`)
        }
      }
    }
    expect(broken).toEqual([])
  })
})

describe('the schemas describe what citadel really writes', () => {
  it('run reports, backup status, the health report and the files of a backup', async () => {
    const roots = await setUpServer()
    const setup = await citadelJson(['run', 'initial-setup', '--check'], roots.env)
    expect(misfit(runReportSchema, setup.doc)).toBeNull()

    const first = await backUp(roots, { 'm/weights.bin': 'one', 'm/config.json': '{}' })
    await backUp(roots, { 'm/weights.bin': 'two' })
    const verify = await citadelJson(['backup', 'verify', first, '--sample', '1'], roots.env)
    expect(verify.code, verify.stderr).toBe(0)
    expect(misfit(runReportSchema, verify.doc)).toBeNull()
    const created = await citadelJson(['backup', 'create', '--check'], roots.env)
    expect(created.doc.tasks[0].changes.map((c: { action: string }) => c.action)).toEqual(['create incremental backup', 'point latest'])
    expect(misfit(runReportSchema, created.doc)).toBeNull()

    const status = await citadelJson(['backup', 'status'], roots.env)
    expect(status.doc.tasks[0].data.backups).toHaveLength(2)
    expect(misfit(backupStatusReportSchema, status.doc)).toBeNull()

    const health = await citadelJson(['health-check'], roots.env)
    expect(health.doc.backups.complete).toBe(2)
    expect(misfit(healthReportSchema, health.doc)).toBeNull()
    const monitor = await citadel(['monitor', '--once'], roots.env)
    expect(monitor.stderr).not.toContain('cycle failed')
    const stored = readJson(path.join(roots.app, 'state', 'health.json'))
    expect(misfit(healthReportSchema, stored)).toBeNull()
    const monitorState = readJson(path.join(roots.app, 'state', 'monitor.json')) as { pid: number }
    expect(monitorState.pid).toBeGreaterThan(0)
    expect(misfit(monitorStateSchema, monitorState)).toBeNull()

    const backup = path.join(storeOf(roots), first)
    expect(misfit(backupMetaSchema, readJson(path.join(backup, 'backup.json')))).toBeNull()
    expect(misfit(catalogSchema, readJson(path.join(backup, 'files.json')))).toBeNull()
    expect(misfit(verifyStateSchema, readJson(path.join(backup, 'verify-state.json')))).toBeNull()
  })

  it('refuses a field the schema does not know and an action that is not in the list', () => {
    const report = { playbook: null, on_failure: 'continue', check: false, stats: { ok: 1, changed: 0, failed: 0, skipped: 0 }, failed: [], rolled_back: [], interrupted: false }
    const task = { name: 't', status: 'ok', msg: '', changes: [], warnings: [], data: {}, ran: true, duration_ms: 1 }
    expect(misfit(runReportSchema, { ...report, tasks: [task] })).toBeNull()
    expect(misfit(runReportSchema, { ...report, tasks: [{ ...task, extra: 1 }] })).toMatch(/^tasks\.0: /)
    const change = { path: '/x', action: 'paint it', before: null, after: null }
    expect(misfit(runReportSchema, { ...report, tasks: [{ ...task, changes: [change] }] })).toMatch(/^tasks\.0\.changes\.0\.action: /)
  })
})
