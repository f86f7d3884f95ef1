#!/usr/bin/env node
// `npm test`: the type check and the tests side by side instead of one after the other, so tsc's half
// minute hides behind the tests' wait for child processes. The tests' output streams as it comes; tsc's
// follows them, so its errors are not buried in the middle. Fails when either fails. Arguments go to vitest.
import { spawn } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)))
const bin = (pkg, file) => path.join(root, 'node_modules', pkg, file)
const exited = (child) => new Promise((resolve) => child.on('close', (code, signal) => resolve(code ?? (signal ? 1 : 0))))

const tsc = spawn(process.execPath, [bin('typescript', 'bin/tsc'), '--noEmit', '-p', root, '--pretty', 'false'], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] })
let types = ''
tsc.stdout.on('data', (d) => (types += d))
tsc.stderr.on('data', (d) => (types += d))
const vitest = spawn(process.execPath, [bin('vitest', 'vitest.mjs'), 'run', ...process.argv.slice(2)], { cwd: root, stdio: 'inherit' })

const [typesCode, testsCode] = await Promise.all([exited(tsc), exited(vitest)])
process.stdout.write(typesCode === 0 ? 'tsc --noEmit: no type errors\n' : `tsc --noEmit: type errors (exit ${typesCode}):\n${types}`)
process.exit(typesCode || testsCode)
