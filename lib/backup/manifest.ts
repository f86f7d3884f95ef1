// The SHA256SUMS format of GNU coreutils `sha256sum`, so that a backup can be verified without citadel:
// `cd data && sha256sum -c --strict ../SHA256SUMS`. Names are bytes there: the file is read with
// decodeName and written with manifestBytes, so a name that is not UTF-8 stays the bytes it is.
import { decodeName, encodeName, holdsRawBytes } from '../infra/fsx.ts'

/** `path` is relative to the backup's data/ directory, '/'-separated. */
export interface ManifestEntry { path: string; sha256: string }

/**
 * Orders as the UTF-8 bytes do (like `LC_ALL=C sort`), so the manifest sorts the same everywhere.
 * UTF-16 code units would put U+E000–U+FFFF after the surrogate pairs of emoji; UTF-8 puts them before.
 */
export function compareBytewise(a: string, b: string): number {
  // A name that is not UTF-8 holds escaped bytes (see decodeName) that sort only as the bytes themselves.
  if (holdsRawBytes(a) || holdsRawBytes(b)) return Buffer.compare(encodeName(a), encodeName(b))
  const shorter = Math.min(a.length, b.length)
  for (let i = 0; i < shorter; i++) {
    // UTF-8 preserves the order of code points, so comparing them compares the encoded bytes.
    if (a.charCodeAt(i) !== b.charCodeAt(i)) return a.codePointAt(i)! - b.codePointAt(i)!
  }
  return a.length - b.length
}

// coreutils 9 escapes exactly these in a name and then marks the line with a leading backslash.
const ESCAPED = /[\\\n\r]/g
const ESCAPE: Record<string, string> = { '\\': '\\\\', '\n': '\\n', '\r': '\\r' }
const UNESCAPE: Record<string, string | undefined> = { '\\': '\\', n: '\n', r: '\r' }

function formatLine({ path, sha256 }: ManifestEntry): string {
  if (!/^[0-9a-f]{64}$/.test(sha256)) throw new Error(`cannot list ${JSON.stringify(path)}: ${JSON.stringify(sha256)} is not 64 lowercase hex digits`)
  if (path === '' || path.includes('\0')) throw new Error(`cannot list ${JSON.stringify(path)}: a file name cannot be empty or contain NUL`)
  const escaped = path.replace(ESCAPED, (c) => ESCAPE[c])
  return `${escaped === path ? '' : '\\'}${sha256}  ${escaped}\n`
}

/** The lines `sha256sum` prints in text mode for these files, sorted by name; '' for none. */
export function formatManifest(entries: ManifestEntry[]): string {
  return [...entries].sort((x, y) => compareBytewise(x.path, y.path)).map(formatLine).join('')
}

/** formatManifest as the bytes of the file. */
export const manifestBytes = (entries: ManifestEntry[]): Buffer => encodeName(formatManifest(entries))

/** parseManifest of the file's bytes. */
export const parseManifestBytes = (bytes: Buffer): ManifestEntry[] => parseManifest(decodeName(bytes))

const HEX64 = /^[0-9a-fA-F]{64}$/

/** A name as sha256sum escapes it (after the leading backslash that marks the line), back to the name. */
export function unescapeName(name: string, where: string): string {
  return name.replace(/\\(.?)/gs, (_, c: string) => {
    const plain = UNESCAPE[c]
    if (plain === undefined) throw new Error(`${where}: invalid escape "\\${c}" in the name; only \\\\, \\n and \\r are defined`)
    return plain
  })
}

/**
 * Reads what formatManifest or `sha256sum [-b]` wrote: an optional backslash (the name is escaped), 64 hex
 * digits, two spaces (text mode) or a space and a star (binary mode), the name. Throws naming the first
 * malformed line. Sliced by position rather than matched by one regular expression: a manifest of 20,000
 * files parses in a few milliseconds instead of tens.
 */
export function parseManifest(text: string): ManifestEntry[] {
  const lines = text.split('\n')
  if (lines.at(-1) === '') lines.pop()
  return lines.map((raw, index) => {
    // sha256sum -c drops one trailing CR as well, so a manifest that passed through CRLF tools still reads.
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw
    const escaped = line.startsWith('\\')
    const at = escaped ? 1 : 0
    const sha256 = line.slice(at, at + 64)
    const name = line.slice(at + 66)
    if (!HEX64.test(sha256) || line[at + 64] !== ' ' || (line[at + 65] !== ' ' && line[at + 65] !== '*') || name === '')
      throw new Error(`SHA256SUMS line ${index + 1}: expected "<64 hex digits>  <name>" or "<64 hex digits> *<name>", got ${JSON.stringify(raw)}`)
    return { path: escaped ? unescapeName(name, `SHA256SUMS line ${index + 1}`) : name, sha256: sha256.toLowerCase() }
  })
}
