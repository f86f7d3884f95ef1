// Shared by the backup tests: a set-up server on temporary roots, backups made with the real command.
import { mkdirSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { expect } from 'vitest'
import { citadel, citadelJson, makeRoots, type Roots } from './helpers.ts'

export const storeOf = (roots: Roots) => path.join(roots.backup, 'models')

/** Roots on which initial-setup has run, so the backup store exists. */
export async function setUpServer(extraEnv: Record<string, string> = {}): Promise<Roots> {
  const roots = makeRoots(extraEnv)
  const setup = await citadel(['run', 'initial-setup'], roots.env)
  expect(setup.code, setup.stderr).toBe(0)
  return roots
}

export function writeFile(file: string, content: string | Buffer) {
  mkdirSync(path.dirname(file), { recursive: true })
  writeFileSync(file, content)
}

/** Writes `files` into the active models and backs them up with the real command; returns the backup's name. */
export async function backUp(roots: Roots, files: Record<string, string> = {}): Promise<string> {
  for (const [rel, content] of Object.entries(files)) writeFile(path.join(roots.active, rel), content)
  const result = await citadelJson(['backup', 'create'], roots.env)
  expect(result.code, result.stdout + result.stderr).toBe(0)
  return result.doc.tasks[0].data.backup
}

export function pointLatest(roots: Roots, name: string) {
  unlinkSync(path.join(storeOf(roots), 'latest'))
  symlinkSync(name, path.join(storeOf(roots), 'latest'))
}
