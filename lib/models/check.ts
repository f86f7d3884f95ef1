// Structure checks of a model directory, offline and from header bytes only: a safetensors file or a GGUF
// file is judged by its header against its own size, so a download cut short is caught without reading
// the weights. What vLLM would load as garbage (a shard the index names but that is missing, a tensor the
// index promises that its shard does not hold) is caught here too.
import { closeSync, constants, fstatSync, openSync, readSync, realpathSync, statSync } from 'node:fs'
import path from 'node:path'
import { fsPath, isInside } from '../infra/fsx.ts'
import { walkTree, type TreeFile } from '../infra/tree.ts'

/** What is wrong with one file of a model; `path` is relative to the model directory. */
export interface ModelProblem { path: string; detail: string }

export interface ModelStructure {
  /** The regular files of the directory (symlinks are judged through their targets, which are among these). */
  files: TreeFile[]
  /** Each link inside that leads to one of `files`: the link's path → the file's. */
  links: Map<string, string>
  problems: ModelProblem[]
}

/** The reference implementation refuses a longer header, so a larger length means damage, not a model. */
const SAFETENSORS_HEADER_MAX = 100_000_000
/** Bits per element of each safetensors dtype. */
const SAFETENSORS_BITS: Record<string, number> = {
  BOOL: 8, F4: 4, F6_E2M3: 6, F6_E3M2: 6, U8: 8, I8: 8, F8_E5M2: 8, F8_E4M3: 8, F8_E8M0: 8,
  I16: 16, U16: 16, F16: 16, BF16: 16, I32: 32, U32: 32, F32: 32, C64: 64, F64: 64, I64: 64, U64: 64,
}
/** A broken header can name thousands of tensors wrongly: the first few say enough. */
const PROBLEMS_PER_FILE = 5

const JSON_FILES = new Set(['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json'])
const INDEX_SUFFIX = '.safetensors.index.json'

const isInteger = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0

/** Reads exactly `length` bytes at `position`, or fewer only at the end of the file. */
function readAt(fd: number, length: number, position: number): Buffer {
  const buffer = Buffer.allocUnsafe(length)
  let done = 0
  while (done < length) {
    const n = readSync(fd, buffer, done, length - done, position + done)
    if (n === 0) break
    done += n
  }
  return buffer.subarray(0, done)
}

/** Runs `use` on the open file; throws when `file` is no longer a regular file (swapped since it was listed). */
function withFile<T>(file: string, use: (fd: number, size: number) => T): T {
  // O_NONBLOCK: a FIFO swapped in fails the check below instead of blocking the open forever.
  const fd = openSync(fsPath(file), constants.O_RDONLY | constants.O_NONBLOCK)
  try {
    const st = fstatSync(fd)
    if (!st.isFile()) throw new Error(`${file} is no longer a regular file; verify again`)
    return use(fd, st.size)
  } finally {
    closeSync(fd)
  }
}

const readText = (file: string) => withFile(file, (fd, size) => readAt(fd, size, 0).toString('utf8'))

/** Keeps the first few problems of a file and counts the rest. */
function capped(details: string[]): string[] {
  if (details.length <= PROBLEMS_PER_FILE) return details
  return [...details.slice(0, PROBLEMS_PER_FILE), `and ${details.length - PROBLEMS_PER_FILE} more problems of its header`]
}

interface TensorSpan { name: string; begin: number; end: number }

/**
 * The problems of a safetensors file, and the names of the tensors its header lists (null
 * when the header cannot be read at all). Layout: 8 bytes little-endian N, N bytes of JSON, then the data,
 * which the tensors' data_offsets must cover exactly, in any order.
 */
export function checkSafetensors(file: string): { problems: string[]; tensors: Set<string> | null } {
  return withFile(file, (fd, size) => {
    if (size < 8) return { problems: [`${size} bytes: too short for a safetensors file (it starts with an 8-byte header length)`], tensors: null }
    const headerLength = readAt(fd, 8, 0).readBigUInt64LE(0)
    if (headerLength > BigInt(SAFETENSORS_HEADER_MAX)) return { problems: [`header length ${headerLength} is over the 100 MB limit: not a safetensors file, or damaged`], tensors: null }
    const n = Number(headerLength)
    if (n > size - 8) return { problems: [`header length ${n} does not fit in the file of ${size} bytes: cut short, or not a safetensors file`], tensors: null }
    let header: unknown
    try {
      header = JSON.parse(readAt(fd, n, 8).toString('utf8'))
    } catch (err) {
      return { problems: [`the header is not valid JSON (${(err as Error).message})`], tensors: null }
    }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) return { problems: ['the header is not a JSON object of tensors'], tensors: null }
    const problems: string[] = []
    const spans: TensorSpan[] = []
    const tensors = new Set<string>()
    let unplaced = false
    for (const [name, entry] of Object.entries(header as Record<string, unknown>)) {
      if (name === '__metadata__') continue
      tensors.add(name)
      const { problem, span } = judgeTensor(entry)
      if (problem) problems.push(`tensor ${name}: ${problem}`)
      if (span) spans.push({ name, ...span })
      else unplaced = true
    }
    // Without every tensor's place, the data's gaps and length would only echo the problem above.
    if (unplaced) return { problems: capped(problems), tensors }
    spans.sort((a, b) => a.begin - b.begin || a.end - b.end)
    let covered = 0
    let last: TensorSpan | null = null
    for (const span of spans) {
      if (span.begin > covered) problems.push(`bytes ${covered}..${span.begin} of the data belong to no tensor (a gap before ${span.name})`)
      else if (span.begin < covered) problems.push(`tensor ${span.name} (bytes ${span.begin}..${span.end}) overlaps ${last!.name} (bytes ${last!.begin}..${last!.end})`)
      if (span.end >= covered) (covered = span.end, last = span)
    }
    const described = 8 + n + covered
    if (described > size) problems.push(`cut short: ${size} bytes, its header describes ${described} (${described - size} bytes missing)`)
    else if (described < size) problems.push(`${size - described} bytes after the last tensor's data: the file is longer than its header describes`)
    return { problems: capped(problems), tensors }
  })
}

/**
 * What is wrong with a header entry (its shape and dtype must fill its data_offsets exactly), and where its
 * data lies when its data_offsets say so.
 */
function judgeTensor(entry: unknown): { problem: string | null; span: { begin: number; end: number } | null } {
  if (typeof entry !== 'object' || entry === null) return { problem: 'not an object with dtype, shape and data_offsets', span: null }
  const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isInteger)) return { problem: `data_offsets ${JSON.stringify(offsets)} is not [begin, end]`, span: null }
  const [begin, end] = offsets as [number, number]
  if (begin > end) return { problem: `data_offsets [${begin}, ${end}] ends before it begins`, span: null }
  const span = { begin, end }
  const bits = typeof dtype === 'string' ? SAFETENSORS_BITS[dtype] : undefined
  if (bits === undefined) return { problem: `dtype ${JSON.stringify(dtype)} is not one of ${Object.keys(SAFETENSORS_BITS).join(', ')}`, span }
  if (!Array.isArray(shape) || !shape.every(isInteger)) return { problem: `shape ${JSON.stringify(shape)} is not a list of whole numbers`, span }
  const bitCount = shape.reduce((product: number, d: number) => product * d, 1) * bits
  if (bitCount % 8 !== 0) return { problem: `shape [${shape.join(', ')}] of ${dtype} is not a whole number of bytes`, span }
  if (bitCount / 8 !== end - begin) return { problem: `shape [${shape.join(', ')}] of ${dtype} is ${bitCount / 8} bytes, its data_offsets [${begin}, ${end}] hold ${end - begin}`, span }
  return { problem: null, span }
}

/** GGML tensor types: elements per block and bytes per block (ggml's type traits; types it removed are left out). */
const GGML_TYPES: Record<number, [number, number]> = {
  0: [1, 4], 1: [1, 2], 2: [32, 18], 3: [32, 20], 6: [32, 22], 7: [32, 24], 8: [32, 34], 9: [32, 36],
  10: [256, 84], 11: [256, 110], 12: [256, 144], 13: [256, 176], 14: [256, 210], 15: [256, 292],
  16: [256, 66], 17: [256, 74], 18: [256, 98], 19: [256, 50], 20: [32, 18], 21: [256, 110], 22: [256, 82],
  23: [256, 136], 24: [1, 1], 25: [1, 2], 26: [1, 4], 27: [1, 8], 28: [1, 8], 29: [256, 56], 30: [1, 2],
  34: [256, 54], 35: [256, 66], 39: [32, 17],
}
/** Bytes of each fixed-size GGUF metadata value type; 8 is a string and 9 an array. */
const GGUF_VALUE_BYTES: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 }
const GGUF_STRING = 8
const GGUF_ARRAY = 9
const GGUF_UINT32 = 4
const GGML_MAX_DIMS = 4
const GGUF_DEFAULT_ALIGNMENT = 32
/** Reads of the header go in steps of this much: a vocabulary of 150,000 tokens makes a header of megabytes. */
const GGUF_READ_BYTES = 1 << 20

class HeaderEnd extends Error {}

/** Reads a GGUF header front to back, fetching from the file only what it has not read yet. */
class GgufReader {
  pos = 0
  private buffer: Buffer = Buffer.alloc(0)
  private bufferAt = 0
  constructor(private fd: number, readonly size: number) {}

  private take(n: number): Buffer {
    if (this.pos + n > this.size) throw new HeaderEnd(`the file ends at ${this.size} bytes inside its header`)
    if (this.pos + n > this.bufferAt + this.buffer.length) {
      this.buffer = readAt(this.fd, Math.max(n, GGUF_READ_BYTES), this.pos)
      this.bufferAt = this.pos
    }
    const at = this.pos - this.bufferAt
    this.pos += n
    return this.buffer.subarray(at, at + n)
  }

  /** Moves past `n` bytes without reading them. */
  skip(n: number): void {
    if (this.pos + n > this.size) throw new HeaderEnd(`the file ends at ${this.size} bytes inside its header`)
    this.pos += n
  }

  u32(): number {
    return this.take(4).readUInt32LE(0)
  }
  u64(what: string): number {
    const v = this.take(8).readBigUInt64LE(0)
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new HeaderEnd(`${what} ${v} is beyond any file`)
    return Number(v)
  }
  string(what: string): string {
    return this.take(this.u64(`the length of ${what}`)).toString('utf8')
  }

  /** Moves past a metadata value; returns it when it is a uint32 (the only kind citadel needs: general.alignment). */
  value(type: number, key: string): number | null {
    const fixed = GGUF_VALUE_BYTES[type]
    if (fixed !== undefined) {
      if (type === GGUF_UINT32) return this.u32()
      this.skip(fixed)
    } else if (type === GGUF_STRING) this.skip(this.u64(`the length of the value of ${key}`))
    else if (type === GGUF_ARRAY) {
      const itemType = this.u32()
      const count = this.u64(`the length of the array ${key}`)
      const itemBytes = GGUF_VALUE_BYTES[itemType]
      if (itemBytes !== undefined) this.skip(count * itemBytes)
      else if (itemType === GGUF_STRING || itemType === GGUF_ARRAY) {
        // Each item is at least its 8-byte length (or type and length): a count beyond that is damage.
        if (count * 8 > this.size - this.pos) throw new HeaderEnd(`the array ${key} claims ${count} items, more than the file can hold`)
        for (let i = 0; i < count; i++) this.value(itemType, key)
      } else throw new HeaderEnd(`the array ${key} has items of unknown type ${itemType}`)
    } else throw new HeaderEnd(`the value of ${key} has unknown type ${type}`)
    return null
  }
}

/**
 * The problems of a GGUF file: magic "GGUF", version 2 or 3, counts the file can hold, a metadata section
 * and tensor table that end inside the file, and every tensor's data (from its dimensions and type) inside
 * the data section, which starts at the next multiple of general.alignment after the table.
 */
export function checkGguf(file: string): string[] {
  return withFile(file, (fd, size) => {
    const r = new GgufReader(fd, size)
    try {
      if (size < 24) return [`${size} bytes: too short for a GGUF header`]
      const magic = readAt(fd, 4, 0).toString('latin1')
      r.skip(4)
      if (magic !== 'GGUF') return [`starts with ${JSON.stringify(magic)}, not the GGUF magic`]
      const version = r.u32()
      if (version !== 2 && version !== 3) return [`GGUF version ${version}; expected 2 or 3`]
      const tensorCount = r.u64('the tensor count')
      const kvCount = r.u64('the metadata count')
      // The smallest metadata entry is 13 bytes (key length, type, one byte), the smallest tensor entry 24.
      if (kvCount * 13 > size) return [`${kvCount} metadata entries cannot fit in ${size} bytes`]
      if (tensorCount * 24 > size) return [`${tensorCount} tensors cannot fit in ${size} bytes`]
      let alignment = GGUF_DEFAULT_ALIGNMENT
      for (let i = 0; i < kvCount; i++) {
        const key = r.string(`metadata key ${i}`)
        const value = r.value(r.u32(), key)
        if (key === 'general.alignment' && value !== null) alignment = value
      }
      if (alignment === 0 || alignment % 8 !== 0) return [`general.alignment is ${alignment}; expected a multiple of 8`]
      const tensors: { name: string; dims: number[]; type: number; offset: number }[] = []
      for (let i = 0; i < tensorCount; i++) {
        const name = r.string(`the name of tensor ${i}`)
        const nDims = r.u32()
        if (nDims > GGML_MAX_DIMS) return [`tensor ${name} has ${nDims} dimensions; at most ${GGML_MAX_DIMS}`]
        const dims = Array.from({ length: nDims }, () => r.u64(`a dimension of ${name}`))
        tensors.push({ name, dims, type: r.u32(), offset: r.u64(`the offset of ${name}`) })
      }
      const dataStart = Math.ceil(r.pos / alignment) * alignment
      const dataBytes = size - dataStart
      if (dataBytes < 0) return [`the data section would start at ${dataStart}, past the end of the file (${size} bytes)`]
      const problems: string[] = []
      for (const t of tensors) {
        if (t.offset % alignment !== 0) problems.push(`tensor ${t.name}: offset ${t.offset} is not a multiple of the alignment ${alignment}`)
        const traits = GGML_TYPES[t.type]
        // A type newer than this table: its size is unknown, its start can still be checked.
        if (!traits) {
          if (t.offset > dataBytes) problems.push(`tensor ${t.name}: offset ${t.offset} is past the end of the data (${dataBytes} bytes)`)
          continue
        }
        const [block, blockBytes] = traits
        const [first = 1, ...rest] = t.dims
        if (first % block !== 0) {
          problems.push(`tensor ${t.name}: its first dimension ${first} is not a multiple of its type's block of ${block}`)
          continue
        }
        const length = (first / block) * blockBytes * rest.reduce((p, d) => p * d, 1)
        if (t.offset + length > dataBytes) problems.push(`tensor ${t.name}: bytes ${t.offset}..${t.offset + length} of the data, which holds ${dataBytes}: cut short`)
      }
      return capped(problems)
    } catch (err) {
      if (err instanceof HeaderEnd) return [err.message]
      throw err
    }
  })
}

/** The problems of an index: a shard its weight_map names is missing, or does not hold a tensor it is said to. */
function checkIndex(root: string, rel: string, shardTensors: Map<string, Set<string> | null>, present: Set<string>): string[] {
  let index: unknown
  try {
    index = JSON.parse(readText(path.join(root, rel)))
  } catch (err) {
    return [`not valid JSON (${(err as Error).message})`]
  }
  const map = (index as { weight_map?: unknown } | null)?.weight_map
  if (typeof map !== 'object' || map === null || Array.isArray(map)) return ['has no weight_map object (tensor name → shard file)']
  const byShard = new Map<string, string[]>()
  for (const [tensor, shard] of Object.entries(map)) {
    if (typeof shard !== 'string') return [`weight_map gives ${JSON.stringify(shard)} as the shard of ${tensor}, not a file name`]
    byShard.set(shard, [...(byShard.get(shard) ?? []), tensor])
  }
  const problems: string[] = []
  for (const [shard, listed] of byShard) {
    const shardRel = path.posix.normalize(path.posix.join(path.posix.dirname(rel), shard))
    if (shardRel.startsWith('../') || path.posix.isAbsolute(shard)) {
      problems.push(`names shard ${shard}, outside the model directory`)
      continue
    }
    if (!present.has(shardRel)) {
      problems.push(`names shard ${shard} (${listed.length} tensors), which is missing`)
      continue
    }
    const held = shardTensors.get(shardRel)
    // A shard whose header cannot be read is reported on its own.
    if (!held) continue
    const absent = listed.filter((t) => !held.has(t))
    if (absent.length) problems.push(`lists ${absent.slice(0, 3).join(', ')}${absent.length > 3 ? ` and ${absent.length - 3} more` : ''} in ${shard}, whose header does not hold ${absent.length === 1 ? 'it' : 'them'}`)
  }
  return problems
}

/**
 * The files of the model directory `root` and what is wrong with its structure. A symlink inside (a Hugging
 * Face snapshot's link to its blob) is judged by the name it gives its target; one that dangles or leads out
 * of the directory is a problem, as nothing outside is verified.
 */
export function checkModelStructure(root: string): ModelStructure {
  const tree = walkTree(root)
  const problems: ModelProblem[] = []
  const realRoot = realpathSync(fsPath(root)).toString()
  /** Every name a file can be read by: the regular files and the links to them. */
  const readable = new Set<string>(tree.files.map((f) => f.rel))
  const links = new Map<string, string>()
  for (const link of tree.symlinks) {
    let target: string
    try {
      target = realpathSync(fsPath(path.join(root, link.rel))).toString()
    } catch {
      problems.push({ path: link.rel, detail: `a link to ${link.target}, which does not exist` })
      continue
    }
    if (!isInside(realRoot, target)) problems.push({ path: link.rel, detail: `a link to ${link.target}, outside the model directory: not verified` })
    else {
      if (statSync(target).isFile()) {
        readable.add(link.rel)
        links.set(link.rel, path.relative(realRoot, target).split(path.sep).join('/'))
      }
    }
  }
  const shardTensors = new Map<string, Set<string> | null>()
  const indexes: string[] = []
  for (const rel of readable) {
    const file = path.join(root, rel)
    const name = path.posix.basename(rel)
    let found: string[] = []
    if (name.endsWith('.safetensors')) {
      const result = checkSafetensors(file)
      shardTensors.set(rel, result.tensors)
      found = result.problems
    } else if (name.endsWith('.gguf')) found = checkGguf(file)
    else if (name.endsWith(INDEX_SUFFIX)) indexes.push(rel)
    else if (JSON_FILES.has(name)) found = jsonProblems(file)
    problems.push(...found.map((detail) => ({ path: rel, detail })))
  }
  for (const rel of indexes) problems.push(...checkIndex(root, rel, shardTensors, readable).map((detail) => ({ path: rel, detail })))
  return { files: tree.files, links, problems }
}

function jsonProblems(file: string): string[] {
  try {
    JSON.parse(readText(file))
    return []
  } catch (err) {
    return [`not valid JSON (${(err as Error).message})`]
  }
}
