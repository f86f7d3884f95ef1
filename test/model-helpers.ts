// Model files written from the tests by their specifications: safetensors (8-byte little-endian header
// length, JSON header, data) and GGUF (header, metadata, tensor table, aligned data), so that the checks
// meet the real layouts rather than citadel's idea of them.
import { randomBytes } from 'node:crypto'
import path from 'node:path'
import { writeFile } from './backup-helpers.ts'

export interface TensorSpec { name: string; dtype: string; shape: number[] }

const DTYPE_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2, I64: 8, U8: 1 }

/** A safetensors file whose header is `header` as given, padded with spaces as the format allows, and `dataBytes` of data. */
export function rawSafetensors(header: unknown, dataBytes: number): Buffer {
  let json = JSON.stringify(header)
  json += ' '.repeat((8 - (json.length % 8)) % 8)
  const length = Buffer.alloc(8)
  length.writeBigUInt64LE(BigInt(Buffer.byteLength(json)))
  return Buffer.concat([length, Buffer.from(json), randomBytes(dataBytes)])
}

/** A correct safetensors file holding `tensors` back to back, in order, with metadata. */
export function safetensors(tensors: TensorSpec[]): Buffer {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } }
  let at = 0
  for (const t of tensors) {
    const length = t.shape.reduce((p, d) => p * d, 1) * DTYPE_BYTES[t.dtype]!
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + length] }
    at += length
  }
  return rawSafetensors(header, at)
}

/** The shards of a small model with several dtypes, and the index that maps each tensor to its shard. */
export const SHARDS: Record<string, TensorSpec[]> = {
  'model-00001-of-00002.safetensors': [
    { name: 'model.embed_tokens.weight', dtype: 'BF16', shape: [32, 16] },
    { name: 'model.layers.0.self_attn.q_proj.weight', dtype: 'F16', shape: [16, 16] },
    { name: 'model.layers.0.input_layernorm.weight', dtype: 'F32', shape: [16] },
  ],
  'model-00002-of-00002.safetensors': [
    { name: 'model.layers.0.mlp.down_proj.weight', dtype: 'F16', shape: [16, 8] },
    { name: 'model.position_ids', dtype: 'I64', shape: [1, 64] },
    { name: 'lm_head.weight', dtype: 'BF16', shape: [32, 16] },
  ],
}

export function indexOf(shards: Record<string, TensorSpec[]>): string {
  const weightMap = Object.fromEntries(Object.entries(shards).flatMap(([file, tensors]) => tensors.map((t) => [t.name, file])))
  return JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }, null, 2)
}

/** A correct sharded safetensors model in `dir`, with its index and JSON files. */
export function writeModel(dir: string): void {
  for (const [file, tensors] of Object.entries(SHARDS)) writeFile(path.join(dir, file), safetensors(tensors))
  writeFile(path.join(dir, 'model.safetensors.index.json'), indexOf(SHARDS))
  writeFile(path.join(dir, 'config.json'), JSON.stringify({ model_type: 'llama', hidden_size: 16 }))
  writeFile(path.join(dir, 'generation_config.json'), '{"do_sample": true}')
  writeFile(path.join(dir, 'tokenizer.json'), JSON.stringify({ version: '1.0', model: { vocab: { a: 0, b: 1 } } }))
  writeFile(path.join(dir, 'tokenizer_config.json'), '{"model_max_length": 4096}')
}

const u32 = (v: number) => { const b = Buffer.alloc(4); b.writeUInt32LE(v); return b }
const u64 = (v: number) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); return b }
const str = (s: string) => Buffer.concat([u64(Buffer.byteLength(s)), Buffer.from(s)])

/** GGML types the test writes: [type id, elements per block, bytes per block]. */
const GGML: Record<string, [number, number, number]> = { F32: [0, 1, 4], F16: [1, 1, 2], Q8_0: [8, 32, 34], Q4_K: [12, 256, 144] }

export interface GgufTensor { name: string; type: string; dims: number[] }

/**
 * A GGUF v3 file: magic, version, counts, metadata (a string, general.alignment as uint32, an array of
 * strings, an array of floats), the tensor table, then each tensor's data at the next multiple of the alignment.
 * `tamper` may change the parts before they are joined.
 */
export function gguf(tensors: GgufTensor[], tamper: { version?: number; magic?: string; offsetShift?: number; cut?: number } = {}): Buffer {
  const alignment = 32
  const kv = [
    Buffer.concat([str('general.architecture'), u32(8), str('llama')]),
    Buffer.concat([str('general.alignment'), u32(4), u32(alignment)]),
    Buffer.concat([str('tokenizer.ggml.tokens'), u32(9), u32(8), u64(3), str('<s>'), str('</s>'), str('hello')]),
    Buffer.concat([str('tokenizer.ggml.scores'), u32(9), u32(6), u64(3), Buffer.alloc(12)]),
  ]
  const infos: Buffer[] = []
  const data: Buffer[] = []
  let offset = 0
  for (const t of tensors) {
    const [type, block, blockBytes] = GGML[t.type]!
    const length = (t.dims[0]! / block) * blockBytes * t.dims.slice(1).reduce((p, d) => p * d, 1)
    infos.push(Buffer.concat([str(t.name), u32(t.dims.length), ...t.dims.map(u64), u32(type), u64(offset + (tamper.offsetShift ?? 0))]))
    const padded = Math.ceil(length / alignment) * alignment
    data.push(Buffer.concat([randomBytes(length), Buffer.alloc(padded - length)]))
    offset += padded
  }
  const head = Buffer.concat([Buffer.from(tamper.magic ?? 'GGUF', 'latin1'), u32(tamper.version ?? 3), u64(tensors.length), u64(kv.length), ...kv, ...infos])
  const file = Buffer.concat([head, Buffer.alloc((alignment - (head.length % alignment)) % alignment), ...data])
  return file.subarray(0, file.length - (tamper.cut ?? 0))
}

export const GGUF_TENSORS: GgufTensor[] = [
  { name: 'token_embd.weight', type: 'Q8_0', dims: [64, 4] },
  { name: 'blk.0.attn_norm.weight', type: 'F32', dims: [64] },
  { name: 'blk.0.ffn_down.weight', type: 'Q4_K', dims: [256, 2] },
  { name: 'output.weight', type: 'F16', dims: [64, 4] },
]
