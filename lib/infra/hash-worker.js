// SHA-256 of files, one batch per message, for the pool in hashing.ts. Plain JavaScript so that
// `new Worker(path)` can load it both from the sources and beside a bundled build, uncompiled.
//
// In:  { files: (string | Uint8Array)[] }      paths; the bytes of one whose name is not UTF-8
// Out: { type: 'progress', bytes }                 bytes read since the previous report
//      { type: 'done', bytes, results }            bytes not yet reported; one result per file, in order:
//                                                  { sha256, bytesRead, error } with sha256 or error null
//
// In:  { tail: file, final: file }                 a file another process is still writing, start to end
//      { stop: true }                              the writer is gone: a tail not yet whole ends in an error
// Out: { type: 'done', bytes, results: [{ sha256, bytesRead, ino, error }] }
import { createHash } from 'node:crypto'
import { closeSync, constants, fstatSync, lstatSync, openSync, readSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { parentPort } from 'node:worker_threads'

// Plain synchronous reads of 1 MiB: the kernel's readahead already fetches the next part of the file while
// this thread hashes, and on a 2-core machine measured, a double buffer filled on libuv's threads took 25%
// longer (4 GiB on two threads: 1.83 s against 1.43 s, the same as two `openssl sha256`), its wake-ups
// costing more than the copies they overlap. 1 MiB fits a core's L2 cache.
const CHUNK_BYTES = 1024 * 1024
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
      n = readSync(fd, buffer, 0, CHUNK_BYTES, bytesRead)
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

let writerGone = false

/**
 * Hashes a file while its writer (rsync, into a temporary name) appends to it, so the hash ends moments
 * after the copy does instead of starting then. Written sequentially, every byte below the file's size is
 * final; the file is whole once it stands under `final` (rsync renames it there after its last write), and
 * is then read to its end once more.
 */
async function tailFile(file, final) {
  let bytesRead = 0
  let fd
  try {
    fd = openSync(file, OPEN_FLAGS)
    const { ino } = fstatSync(fd)
    const hash = createHash('sha256')
    for (let whole = false; ;) {
      const n = readSync(fd, buffer, 0, CHUNK_BYTES, bytesRead)
      if (n > 0) {
        hash.update(buffer.subarray(0, n))
        bytesRead += n
        countRead(n)
        continue
      }
      if (whole) return { sha256: hash.digest('hex'), bytesRead, ino, error: null }
      whole = lstatSync(final, { throwIfNoEntry: false })?.ino === ino
      if (whole) continue
      if (writerGone) return { sha256: null, bytesRead, ino, error: 'the copy ended before the file was in place' }
      await sleep(2)
    }
  } catch (err) {
    return { sha256: null, bytesRead, ino: null, error: describeError(err) }
  } finally {
    if (fd !== undefined) closeSync(fd)
  }
}

parentPort.on('message', async ({ files, tail, final, stop }) => {
  if (stop) return void (writerGone = true)
  if (tail) {
    const result = await tailFile(tail, final)
    parentPort.postMessage({ type: 'done', bytes: unreportedBytes, results: [result] })
    unreportedBytes = 0
    return
  }
  const results = []
  for (const file of files) results.push(hashFile(file))
  parentPort.postMessage({ type: 'done', bytes: unreportedBytes, results })
  unreportedBytes = 0
})
