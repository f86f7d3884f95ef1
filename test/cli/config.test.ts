// What the command does with settings it refuses: exit 4, one line per bad setting on stderr, nothing on
// stdout, nothing written. Which values are refused, and how each is worded, is in test/unit/config.test.ts.
import { writeFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import { citadel, makeRoots, snapshot } from '../helpers.ts'

describe('citadel with invalid settings', () => {
  it('exits 4 before any task, names the setting and what is expected, and changes nothing', async () => {
    const roots = makeRoots()
    const before = snapshot(roots.base)
    const result = await citadel(['run', 'initial-setup'], { ...roots.env, CITADEL_DIR_MODE: '0999' })
    expect(result.code).toBe(4)
    expect(result.stderr).toMatch(/^citadel: .*CITADEL_DIR_MODE="0999".*octal mode.*\n$/)
    expect(result.stdout).toBe('')
    expect(snapshot(roots.base)).toEqual(before)
  })

  it('prints every bad setting at once, one line each, the .env file named for the one that came from it', async () => {
    const roots = makeRoots()
    writeFileSync(roots.env.CITADEL_ENV_FILE!, 'BACKUP_KEEP_MIN=none\n')
    const before = snapshot(roots.base)
    const result = await citadel(['task', 'create-dirs'], { ...roots.env, CITADEL_DIR_MODE: 'rwx' })
    expect(result.code).toBe(4)
    const lines = result.stderr.trim().split('\n')
    expect(lines).toHaveLength(2)
    for (const line of lines) expect(line).toMatch(/^citadel: /)
    expect(lines.find((l) => l.includes('BACKUP_KEEP_MIN'))).toContain(roots.env.CITADEL_ENV_FILE)
    expect(result.stdout).toBe('')
    expect(snapshot(roots.base)).toEqual(before)
  })
})
