#!/usr/bin/env node
// model promote and model rollback end to end, as an operator runs them (`citadel model promote ALIAS DIR`,
// a fresh Node each time, no server step): target <= 0.5 s each. The model is 4 x 1 GiB safetensors shards
// (sparse, real headers of 256 tensors each) and its index, so the structure check meets a real layout.
// Node's own start (`node -e 0`) is measured beside them as the anchor of what no change to citadel removes.
// Beside the wall clock, the CPU time of each run and its children (what a shared machine's load does not
// inflate much, as it does the wall clock) is shown.
// BENCH_DIR (default: a directory in the system temp dir), BENCH_ROUNDS (7): each figure is the median.
import { spawnSync } from 'node:child_process'
import { closeSync, ftruncateSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs'
import path from 'node:path'
import { benchDir, citadelBin, fmt, median, project, rounds as roundsOf, seconds } from './lib.js'

const base = benchDir('model-promote')
const rounds = roundsOf(7)
const SHARDS = 4
const TENSORS = 256
const SHARD_BYTES = 1 << 30

function writeModel(dir) {
  mkdirSync(dir, { recursive: true })
  const weightMap = {}
  for (let s = 1; s <= SHARDS; s++) {
    const name = `model-0000${s}-of-0000${SHARDS}.safetensors`
    const elements = SHARD_BYTES / TENSORS / 2
    const header = {}
    for (let i = 0; i < TENSORS; i++) {
      const tensor = `model.layers.${(s - 1) * TENSORS + i}.mlp.weight`
      header[tensor] = { dtype: 'BF16', shape: [elements], data_offsets: [i * elements * 2, (i + 1) * elements * 2] }
      weightMap[tensor] = name
    }
    let json = JSON.stringify(header)
    json += ' '.repeat((8 - (json.length % 8)) % 8)
    const length = Buffer.alloc(8)
    length.writeBigUInt64LE(BigInt(json.length))
    const fd = openSync(path.join(dir, name), 'w')
    writeSync(fd, Buffer.concat([length, Buffer.from(json)]))
    ftruncateSync(fd, 8 + json.length + SHARD_BYTES)
    closeSync(fd)
  }
  writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: SHARDS * SHARD_BYTES }, weight_map: weightMap }))
  writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ model_type: 'llama', hidden_size: 4096 }) + '\n')
}

const models = path.join(base, 'models')
const envFile = path.join(base, 'citadel.env')
mkdirSync(path.join(base, 'backup'), { recursive: true })
writeFileSync(envFile, '# settings of this host\nMODEL_REGISTRY=chat=m-v0 # what vLLM serves\nMODEL_AUTO_BACKUP=false\n')
writeModel(path.join(models, 'active', 'm-v0'))
const env = {
  PATH: process.env.PATH,
  HOME: process.env.HOME ?? base,
  CITADEL_ENV_FILE: envFile,
  CITADEL_APP_ROOT: path.join(base, 'app'),
  CITADEL_MODELS_ROOT: models,
  CITADEL_BACKUP_ROOT: path.join(base, 'backup'),
  CITADEL_SYSTEMD_DIR: path.join(base, 'systemd'),
}
/** User + system seconds of every child this process has waited for so far (Linux: /proc/self/stat). */
function childCpu() {
  const fields = readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ')
  // cutime and cstime, fields 16 and 17 of stat(5), in clock ticks of 1/100 s.
  return (Number(fields[13]) + Number(fields[14])) / 100
}
/** Wall and CPU seconds of one run. */
function measure(command, args, options) {
  // Nothing waiting to be written back, so no run pays for the one before.
  spawnSync('sync')
  const cpu = childCpu()
  const start = process.hrtime.bigint()
  const run = spawnSync(command, args, { encoding: 'utf8', ...options })
  const s = seconds(start)
  if (run.status !== 0) throw new Error(`${command} ${args.join(' ')} exited ${run.status}:\n${run.stdout.slice(-2000)}\n${run.stderr.slice(-2000)}`)
  return { s, cpu: childCpu() - cpu }
}
const citadel = (...args) => measure(process.execPath, [citadelBin, ...args], { env, cwd: project })

try {
  const setup = spawnSync(process.execPath, [citadelBin, 'run', 'initial-setup'], { env, cwd: project, encoding: 'utf8' })
  if (setup.status !== 0) throw new Error(`initial-setup exited ${setup.status}: ${setup.stdout.slice(-2000)}${setup.stderr.slice(-2000)}`)
  // One untimed run builds the bundle if a source changed.
  spawnSync(process.execPath, [citadelBin, 'model', 'list'], { env, cwd: project })
  const promote = []
  const rollback = []
  const node = []
  for (let i = 1; i <= rounds; i++) {
    writeModel(path.join(models, 'staging', `m-v${i}`))
    node.push(measure(process.execPath, ['-e', '0']))
    promote.push(citadel('model', 'promote', 'chat', `m-v${i}`))
    // Back to the version before, which marks m-v<i> bad: every round archives one version and restores one.
    rollback.push(citadel('model', 'rollback', 'chat'))
  }
  const row = (name, runs) => {
    const [s, cpu] = [median(runs.map((r) => r.s)), median(runs.map((r) => r.cpu))]
    const after = name === 'node -e 0' ? '' : `  (${fmt(s - median(node.map((r) => r.s)))} after Node's start)`
    console.log(`  ${name.padEnd(10)} ${fmt(s)} wall, ${fmt(cpu)} CPU${after}`)
  }
  console.log(`model promote / rollback of 4 x 1 GiB safetensors, median of ${rounds} rounds (target <= 0.50 s each):`)
  row('node -e 0', node)
  row('promote', promote)
  row('rollback', rollback)
} finally {
  if (!process.env.BENCH_DIR) rmSync(base, { recursive: true, force: true })
}
