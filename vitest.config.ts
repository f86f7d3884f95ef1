import path from 'node:path'
import { BaseSequencer, type TestSpecification } from 'vitest/node'
import { defineConfig } from 'vitest/config'

// Three tiers, each runnable alone (npm run test:unit, test:cli, test:system); npm test runs all of them.
// Every test works in its own temporary directories, mounts and ports, so files run side by side. Most of
// the time is spent waiting on child processes (the CLI, rsync, fio, sshd, ansible), which is why there
// are twice as many workers as the two cores of a small CI machine.
const tier = (name: string, include: string[]) => ({ extends: true as const, test: { name, include } })

/**
 * Seconds each of the files that take minutes took in a full run on 2 cores. A fresh clone (CI) has no
 * timings of its own: without these, vitest would start the files tier by tier, largest source first, and
 * a long system file started last would run alone at the end.
 */
const SLOW: Record<string, number> = {
  'test/cli/contract.test.ts': 290, 'test/system/ansible.test.ts': 215, 'test/system/restore.test.ts': 210,
  'test/cli/launcher.test.ts': 160, 'test/system/kill.test.ts': 160, 'test/system/remote-backup.test.ts': 135,
  'test/system/remote-health.test.ts': 130, 'test/system/model-list.test.ts': 110, 'test/system/model-promote.test.ts': 110,
  'test/system/backup-link-unchanged.test.ts': 100, 'test/system/backup-create.test.ts': 100, 'test/cli/backup-verify.test.ts': 90,
}

/** Longest first across the tiers, by this machine's last run where vitest has one, else by SLOW, else by size. */
class LongestFirst extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const root = this.ctx.config.root
    const expected = (file: TestSpecification) => {
      const rel = path.relative(root, file.moduleId)
      const key = `${file.project.name}:${rel}`
      const timed = this.ctx.cache.getFileTestResults(key)?.duration
      if (timed !== undefined) return timed
      if (SLOW[rel] !== undefined) return SLOW[rel] * 1000
      // A source's size in bytes as milliseconds: a 10 kB file is expected to take 10 s, below every SLOW one.
      return this.ctx.cache.getFileStats(key)?.size ?? 0
    }
    return [...files].sort((a, b) => expected(b) - expected(a))
  }
}

export default defineConfig({
  test: {
    reporters: ['default', './test/summary-reporter.ts'],
    pool: 'forks',
    maxWorkers: 4,
    sequence: { sequencer: LongestFirst },
    // A timeout is there to end a hung test, not to judge speed (bench/ does that): with files side by side on a
    // small machine a test waits its turn for a core, and a minute was too short for the CLI-heavy ones.
    testTimeout: 180_000,
    hookTimeout: 180_000,
    projects: [
      // In-process: pure cores, and functions and tasks on temporary directories; no CLI process, no sshd.
      tier('unit', ['test/unit/**/*.test.ts']),
      // The citadel command as a process. A test file not yet sorted into a tier runs here.
      tier('cli', ['test/cli/**/*.test.ts', 'test/*.test.ts']),
      // What needs the machine: sshd, ansible, root-only mounts, loop devices, systemd-analyze.
      tier('system', ['test/system/**/*.test.ts']),
    ],
  },
})
