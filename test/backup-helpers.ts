// Shared by the backup tests: a set-up server on temporary roots, backups made by the real task. Both run in
// the test's own process (citadelHere): they are set-up; a test about backup create runs the command.
import { mkdirSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { expect } from 'vitest'
import { citadelHere, makeRoots, setUp, type Roots } from './helpers.ts'

export const storeOf = (roots: Roots) => path.join(roots.backup, 'models')

/** Roots on which initial-setup has run, so the backup store exists. */
export async function setUpServer(extraEnv: Record<string, string> = {}): Promise<Roots> {
  const roots = makeRoots(extraEnv)
  await setUp(roots)
  return roots
}

export function writeFile(file: string, content: string | Buffer) {
  mkdirSync(path.dirname(file), { recursive: true })
  writeFileSync(file, content)
}

/** Writes `files` into the active models and backs them up with the real task; returns the backup's name. */
export async function backUp(roots: Roots, files: Record<string, string> = {}): Promise<string> {
  for (const [rel, content] of Object.entries(files)) writeFile(path.join(roots.active, rel), content)
  const { code, report } = await citadelHere(['task', 'backup-create'], roots.env)
  expect(code, JSON.stringify(report?.tasks)).toBe(0)
  return report!.tasks[0]!.data.backup as string
}

export function pointLatest(roots: Roots, name: string) {
  unlinkSync(path.join(storeOf(roots), 'latest'))
  symlinkSync(name, path.join(storeOf(roots), 'latest'))
}
