#!/usr/bin/env node
// model verify's two costs, measured on this machine:
//   structure checks of a 4 x 1 GiB safetensors model (sparse files with real headers of 256 tensors each):
//     the check itself and the time since Node started, target well under 50 ms (headers only);
//   the full hash, `citadel model verify --sample 1` on a model of real bytes, against
//     `openssl speed -multi N -evp sha256`, the hashing limit of the machine (target >= 70%).
// BENCH_DIR (default: a directory in the system temp dir), BENCH_HASH_MIB (4096: the hashed model's size, the 4 x 1 GiB; less on a
// shared machine, where the command's start weighs more), BENCH_ROUNDS (3).
import { execFileSync, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { closeSync, mkdirSync, openSync, rmSync, writeFileSync, writeSync, ftruncateSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { benchDir, citadelBin, cores, gb, median, opensslRate, project, rounds as roundsOf } from './lib.js'

const base = benchDir('model-verify')
const hashMiB = Number(process.env.BENCH_HASH_MIB ?? 4096)
const rounds = roundsOf(3)
const GiB = 1 << 30

/** A safetensors file of `tensors` BF16 tensors of `elements` each, the data written by `fill` (sparse when it writes nothing). */
function writeShard(file, tensors, elements, fill) {
  const header = {}
  for (let i = 0; i < tensors; i++) header[`model.layers.${i}.mlp.weight`] = { dtype: 'BF16', shape: [elements], data_offsets: [i * elements * 2, (i + 1) * elements * 2] }
  let json = JSON.stringify(header)
  json += ' '.repeat((8 - (json.length % 8)) % 8)
  const length = Buffer.alloc(8)
  length.writeBigUInt64LE(BigInt(Buffer.byteLength(json)))
  const fd = openSync(file, 'w')
  writeSync(fd, Buffer.concat([length, Buffer.from(json)]))
  const dataBytes = tensors * elements * 2
  fill(fd, dataBytes)
  ftruncateSync(fd, 8 + Buffer.byteLength(json) + dataBytes)
  closeSync(fd)
}

function writeModel(dir, shards, shardBytes, fill) {
  mkdirSync(dir, { recursive: true })
  const tensors = 256
  for (let i = 1; i <= shards; i++) writeShard(path.join(dir, `model-0000${i}-of-0000${shards}.safetensors`), tensors, shardBytes / tensors / 2, fill)
  writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ model_type: 'llama', hidden_size: 4096 }) + '\n')
}

function structure() {
  const dir = path.join(base, 'structure', 'model')
  writeModel(dir, 4, GiB, () => {})
  // Bundled as citadel runs (bin/citadel.js bundles with esbuild), so a fresh Node pays what a verify pays:
  // its start, loading the code, the check.
  const bundle = path.join(base, 'structure', 'check.mjs')
  execFileSync(path.join(project, 'node_modules', '.bin', 'esbuild'), [path.join(project, 'lib', 'models', 'check.ts'), '--bundle', '--platform=node', '--format=esm', `--outfile=${bundle}`, '--log-level=warning'])
  const script = `
    const t0 = performance.now()
    const { checkModelStructure } = await import(${JSON.stringify(bundle)})
    const t1 = performance.now()
    const { problems, files } = checkModelStructure(${JSON.stringify(dir)})
    const t2 = performance.now()
    if (problems.length || files.length !== 5) throw new Error(JSON.stringify(problems))
    console.log(JSON.stringify({ check: t2 - t1, load: t1 - t0, sinceStart: t2 }))`
  const runs = []
  for (let i = 0; i < Math.max(rounds, 5); i++) {
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: project, encoding: 'utf8' })
    runs.push(JSON.parse(out.trim().split('\n').at(-1)))
  }
  const best = (key) => Math.min(...runs.map((r) => r[key]))
  console.log(`structure checks, 4 x 1 GiB safetensors (1024 tensors), best of ${runs.length}:`)
  console.log(`  the check ${best('check').toFixed(1)} ms (target well under 50 ms); loading its module ${best('load').toFixed(1)} ms; done ${best('sinceStart').toFixed(1)} ms after Node started`)
}

function fullHash() {
  const dir = path.join(base, 'hash')
  const models = path.join(dir, 'models')
  const shardBytes = (hashMiB / 4) * (1 << 20)
  const chunk = randomBytes(16 << 20)
  writeModel(path.join(models, 'active', 'model'), 4, shardBytes, (fd, bytes) => {
    // Different bytes in every 16 MiB so nothing dedups or compresses.
    for (let done = 0; done < bytes; done += chunk.length) writeSync(fd, Buffer.concat([randomBytes(16), chunk.subarray(16, Math.min(chunk.length, bytes - done))]))
  })
  mkdirSync(path.join(dir, 'backup'))
  writeFileSync(path.join(dir, '.env'), '')
  const env = { PATH: process.env.PATH, HOME: process.env.HOME ?? dir, CITADEL_ENV_FILE: path.join(dir, '.env'), CITADEL_APP_ROOT: path.join(dir, 'app'), CITADEL_MODELS_ROOT: models, CITADEL_BACKUP_ROOT: path.join(dir, 'backup'), MODEL_REGISTRY: 'model=model' }
  const citadel = (...args) => spawnSync(process.execPath, [citadelBin, ...args], { env, cwd: project, encoding: 'utf8', maxBuffer: 1 << 26 })
  const setup = citadel('run', 'initial-setup')
  if (setup.status !== 0) throw new Error(`initial-setup exited ${setup.status}: ${setup.stderr}`)
  // Verify and openssl take turns, so both meet the same load of a shared machine: each round's ratio is
  // taken against the openssl run beside it, and the best of each is shown too.
  const seconds = []
  const limits = []
  let bytes = 0
  for (let i = 0; i < rounds; i++) {
    const run = citadel('model', 'verify', '--sample', '1', '--json')
    if (run.status !== 0) throw new Error(`model verify exited ${run.status}: ${run.stdout.slice(-2000)} ${run.stderr.slice(-2000)}`)
    const t = JSON.parse(run.stdout).tasks[0]
    bytes = t.data.models[0].hashed_bytes
    seconds.push(t.duration_ms / 1000)
    limits.push(opensslRate())
  }
  const best = Math.min(...seconds)
  const limit = Math.max(...limits)
  const ratios = seconds.map((s, i) => bytes / s / limits[i])
  console.log(`full hash, model verify --sample 1 of ${gb(bytes)} (page cache warm), ${rounds} rounds, each beside an \`openssl speed -multi ${cores} -evp sha256\`:`)
  console.log(`  best ${best.toFixed(2)} s = ${gb(bytes / best)}/s against openssl's best ${gb(limit)}/s: ${((bytes / best / limit) * 100).toFixed(0)}%; median of the rounds' ratios ${(median(ratios) * 100).toFixed(0)}% (target >= 70%)`)
}

try {
  structure()
  fullHash()
} finally {
  if (!process.env.BENCH_DIR) rmSync(base, { recursive: true, force: true })
}
