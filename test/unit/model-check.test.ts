// The structure checks of lib/models/check.ts on real files written by the specifications (test/model-helpers.ts):
// a correct model passes, and each kind of damage is named with its file.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs'
import { createHash } from 'node:crypto'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { checkGguf, checkModelStructure } from '../../lib/models/check.ts'
import { GGUF_TENSORS, gguf, indexOf, rawSafetensors, safetensors, SHARDS, writeModel } from '../model-helpers.ts'

const dirs: string[] = []
afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true })
})

/** A fresh directory holding a correct model. */
function model(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'citadel-model-'))
  dirs.push(dir)
  writeModel(dir)
  return dir
}

const problemsOf = (dir: string) => checkModelStructure(dir).problems.map((p) => `${p.path}: ${p.detail}`)
const SHARD1 = 'model-00001-of-00002.safetensors'
const SHARD2 = 'model-00002-of-00002.safetensors'

describe('safetensors, the index and the JSON files', () => {
  it('pass a correct model of several dtypes, listing its files', () => {
    const dir = model()
    const structure = checkModelStructure(dir)
    expect(structure.problems).toEqual([])
    expect(structure.files.map((f) => f.rel).sort()).toEqual([SHARD1, SHARD2, 'config.json', 'generation_config.json', 'model.safetensors.index.json', 'tokenizer.json', 'tokenizer_config.json'].sort())
  })

  it('catch a truncated shard by its size alone, saying how much is missing', () => {
    const dir = model()
    const file = path.join(dir, SHARD2)
    const size = readFileSync(file).length
    truncateSync(file, size - 100)
    expect(problemsOf(dir)).toEqual([`${SHARD2}: cut short: ${size - 100} bytes, its header describes ${size} (100 bytes missing)`])
  })

  it('catch a file longer than its header describes', () => {
    const dir = model()
    writeFileSync(path.join(dir, SHARD1), Buffer.concat([readFileSync(path.join(dir, SHARD1)), Buffer.alloc(3)]))
    expect(problemsOf(dir)).toEqual([`${SHARD1}: 3 bytes after the last tensor's data: the file is longer than its header describes`])
  })

  it('catch offsets that leave a gap, and offsets that overlap', () => {
    const dir = model()
    writeFileSync(path.join(dir, 'gap.safetensors'), rawSafetensors({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F16', shape: [2], data_offsets: [12, 16] } }, 16))
    writeFileSync(path.join(dir, 'overlap.safetensors'), rawSafetensors({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, 12))
    expect(problemsOf(dir).sort()).toEqual([
      'gap.safetensors: bytes 8..12 of the data belong to no tensor (a gap before b)',
      'overlap.safetensors: tensor b (bytes 4..12) overlaps a (bytes 0..8)',
    ])
  })

  it('catch a shape that does not fill its offsets, an unknown dtype, a wild header length, a header that is not JSON', () => {
    const dir = model()
    writeFileSync(path.join(dir, 'shape.safetensors'), rawSafetensors({ a: { dtype: 'BF16', shape: [3], data_offsets: [0, 8] } }, 8))
    writeFileSync(path.join(dir, 'dtype.safetensors'), rawSafetensors({ a: { dtype: 'F12', shape: [1], data_offsets: [0, 2] } }, 2))
    const wild = Buffer.alloc(16)
    wild.writeBigUInt64LE(10n ** 12n)
    writeFileSync(path.join(dir, 'length.safetensors'), wild)
    const notJson = Buffer.concat([Buffer.from([8, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{"a": [1')])
    writeFileSync(path.join(dir, 'json.safetensors'), notJson)
    const problems = problemsOf(dir).sort()
    expect(problems).toHaveLength(4)
    expect(problems[0]).toMatch(/^dtype\.safetensors: tensor a: dtype "F12" is not one of BOOL, /)
    expect(problems[1]).toMatch(/^json\.safetensors: the header is not valid JSON/)
    expect(problems[2]).toBe('length.safetensors: header length 1000000000000 is over the 100 MB limit: not a safetensors file, or damaged')
    expect(problems[3]).toBe('shape.safetensors: tensor a: shape [3] of BF16 is 6 bytes, its data_offsets [0, 8] hold 8')
  })

  it('catch a shard the index names that is missing', () => {
    const dir = model()
    rmSync(path.join(dir, SHARD2))
    expect(problemsOf(dir)).toEqual([`model.safetensors.index.json: names shard ${SHARD2} (3 tensors), which is missing`])
  })

  it('catch a tensor the index lists that its shard does not hold', () => {
    const dir = model()
    writeFileSync(path.join(dir, SHARD2), safetensors(SHARDS[SHARD2]!.filter((t) => t.name !== 'lm_head.weight')))
    expect(problemsOf(dir)).toEqual([`model.safetensors.index.json: lists lm_head.weight in ${SHARD2}, whose header does not hold it`])
  })

  it('catch broken JSON in config.json and an index that is not JSON', () => {
    const dir = model()
    writeFileSync(path.join(dir, 'config.json'), '{"model_type": "llama",')
    writeFileSync(path.join(dir, 'model.safetensors.index.json'), indexOf(SHARDS).slice(0, 40))
    const problems = problemsOf(dir).sort()
    expect(problems).toHaveLength(2)
    expect(problems[0]).toMatch(/^config\.json: not valid JSON \(/)
    expect(problems[1]).toMatch(/^model\.safetensors\.index\.json: not valid JSON \(/)
  })

  it('read a Hugging Face cache layout through its snapshot links, and name a link that dangles or leads out', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'citadel-model-'))
    dirs.push(dir)
    const content = safetensors(SHARDS[SHARD1]!)
    const blob = createHash('sha256').update(content).digest('hex')
    mkdirSync(path.join(dir, 'blobs'))
    mkdirSync(path.join(dir, 'snapshots', 'abc123'), { recursive: true })
    writeFileSync(path.join(dir, 'blobs', blob), content)
    symlinkSync(`../../blobs/${blob}`, path.join(dir, 'snapshots', 'abc123', 'model.safetensors'))
    expect(checkModelStructure(dir).problems).toEqual([])

    truncateSync(path.join(dir, 'blobs', blob), content.length - 1)
    symlinkSync('../../blobs/0000', path.join(dir, 'snapshots', 'abc123', 'config.json'))
    symlinkSync('/etc/hostname', path.join(dir, 'snapshots', 'abc123', 'tokenizer.json'))
    expect(problemsOf(dir).sort()).toEqual([
      'snapshots/abc123/config.json: a link to ../../blobs/0000, which does not exist',
      `snapshots/abc123/model.safetensors: cut short: ${content.length - 1} bytes, its header describes ${content.length} (1 bytes missing)`,
      'snapshots/abc123/tokenizer.json: a link to /etc/hostname, outside the model directory: not verified',
    ])
  })
})

describe('GGUF', () => {
  const write = (content: Buffer) => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'citadel-gguf-'))
    dirs.push(dir)
    const file = path.join(dir, 'model-q8_0.gguf')
    writeFileSync(file, content)
    return () => checkGguf(file)
  }

  it('passes a correct file: metadata with strings and arrays, tensors of four types, aligned data', () => {
    const content = gguf(GGUF_TENSORS)
    expect(write(content)()).toEqual([])
  })

  it('catches a wrong magic, an unknown version, a cut-short file, a tensor past the data, a header cut inside', () => {
    expect(write(gguf(GGUF_TENSORS, { magic: 'GGML' }))()).toEqual(['starts with "GGML", not the GGUF magic'])
    expect(write(gguf(GGUF_TENSORS, { version: 1 }))()).toEqual(['GGUF version 1; expected 2 or 3'])
    const cut = write(gguf(GGUF_TENSORS, { cut: 10 }))()
    expect(cut).toHaveLength(1)
    expect(cut[0]).toMatch(/^tensor output\.weight: bytes \d+\.\.\d+ of the data, which holds \d+: cut short$/)
    const shifted = write(gguf(GGUF_TENSORS, { offsetShift: 32 * 100 }))()
    expect(shifted).toHaveLength(4)
    expect(write(gguf(GGUF_TENSORS).subarray(0, 100))()).toEqual(['the file ends at 100 bytes inside its header'])
  })

  it('refuses counts no file of its size could hold', () => {
    const content = gguf(GGUF_TENSORS)
    content.writeBigUInt64LE(2n ** 40n, 8)
    expect(write(content)()).toEqual([`${2 ** 40} tensors cannot fit in ${content.length} bytes`])
  })
})
