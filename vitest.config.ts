import { defineConfig } from 'vitest/config'

// Three tiers, each runnable alone (npm run test:unit, test:cli, test:system); npm test runs all of them.
// Every test works in its own temporary directories, mounts and ports, so files run side by side. Most of
// the time is spent waiting on child processes (the CLI, rsync, fio, sshd, ansible), which is why there
// are twice as many workers as the two cores of a small CI machine.
const tier = (name: string, include: string[]) => ({ extends: true as const, test: { name, include } })

export default defineConfig({
  test: {
    reporters: ['default', './test/summary-reporter.ts'],
    pool: 'forks',
    maxWorkers: 4,
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
