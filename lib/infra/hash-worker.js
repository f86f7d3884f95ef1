// SHA-256 of files, one batch per message, for the pool in hashing.ts. Plain JavaScript so that
// `new Worker(path)` can load it both from the sources and beside a bundled build, uncompiled.
//
// In:  { files: (string | Uint8Array)[] }      paths; the bytes of one whose name is not UTF-8
// Out: { type: 'progress', bytes }                 bytes read since the previous report
//      { type: 'done', bytes, results }            bytes not yet reported; one result per file, in order:
//                                                  { sha256, bytesRead, error } with sha256 or error null
import { createHash } from 'node:crypto'
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs'
import { parentPort } from 'node:worker_threads'

// On a cached 1 GiB file with two threads, 1 and 4 MiB reads tied (~2.3 GB/s) and beat 8 and 16 MiB,
// which spill out of the CPU cache; 4 MiB needs a quarter of the read calls.
const CHUNK_BYTES = 4 * 1024 * 1024
const PROGRESS_EVERY_BYTES = 64 * 1024 * 1024
// O_NOFOLLOW: a symlink swapped in for a file is refused, not hashed in its place.
// O_NONBLOCK: a FIFO swapped in fails the regular-file check instead of blocking the open forever.
const OPEN_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK

const buffer = Buffer.allocUnsafe(CHUNK_BYTES)
let unreportedBytes = 0

function countRead(bytes) {
  unreportedBytes += bytes
  if (unreportedBytes >= PROGRESS_EVERY_BYTES) {
    parentPort.postMessage({ type: 'progress', bytes: unreportedBytes })
    unreportedBytes = 0
  }
}

function describeError(err) {
  if (err.code === 'ELOOP') return 'a symlink (not followed)'
  return err.code ?? String(err.message ?? err)
}

function hashFile(file) {
  let bytesRead = 0
  let fd
  try {
    fd = openSync(file, OPEN_FLAGS)
    if (!fstatSync(fd).isFile()) return { sha256: null, bytesRead, error: 'not a regular file' }
    const hash = createHash('sha256')
    // A short read of a regular file is its end: small files cost one read, not two.
    for (let n = CHUNK_BYTES; n === CHUNK_BYTES; ) {
      n = readSync(fd, buffer, 0, CHUNK_BYTES, null)
      hash.update(buffer.subarray(0, n))
      bytesRead += n
      countRead(n)
    }
    return { sha256: hash.digest('hex'), bytesRead, error: null }
  } catch (err) {
    return { sha256: null, bytesRead, error: describeError(err) }
  } finally {
    if (fd !== undefined) closeSync(fd)
  }
}

parentPort.on('message', ({ files }) => {
  const results = files.map(hashFile)
  parentPort.postMessage({ type: 'done', bytes: unreportedBytes, results })
  unreportedBytes = 0
})
