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
import { closeSync, constants, fstatSync, lstatSync, openSync, read } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { parentPort } from 'node:worker_threads'

// Two buffers: while one is hashed on this thread, the kernel copies the next chunk into the other on a
// libuv pool thread, so a read waiting on the disk, or the page-cache copy (a fifth of the CPU time of a
// cached file), no longer stalls the hash. 1 MiB fits a core's L2 cache beside the other buffer: on a cached
// file it took ~5% less CPU per byte than 4 MiB, whose buffers spill to L3.
const CHUNK_BYTES = 1024 * 1024
const PROGRESS_EVERY_BYTES = 64 * 1024 * 1024
// O_NOFOLLOW: a symlink swapped in for a file is refused, not hashed in its place.
// O_NONBLOCK: a FIFO swapped in fails the regular-file check instead of blocking the open forever.
const OPEN_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK

const buffers = [Buffer.allocUnsafe(CHUNK_BYTES), Buffer.allocUnsafe(CHUNK_BYTES)]
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

const readChunk = (fd, buffer, position) =>
  new Promise((resolve, reject) => read(fd, buffer, 0, CHUNK_BYTES, position, (err, n) => (err ? reject(err) : resolve(n))))

async function hashFile(file) {
  let bytesRead = 0
  let fd
  let pending
  try {
    fd = openSync(file, OPEN_FLAGS)
    if (!fstatSync(fd).isFile()) return { sha256: null, bytesRead, error: 'not a regular file' }
    const hash = createHash('sha256')
    pending = readChunk(fd, buffers[0], 0)
    // A short read of a regular file is its end: small files cost one read, not two.
    for (let i = 0, n = CHUNK_BYTES; n === CHUNK_BYTES; i++) {
      n = await pending
      pending = n === CHUNK_BYTES ? readChunk(fd, buffers[(i + 1) % 2], bytesRead + n) : undefined
      hash.update(buffers[i % 2].subarray(0, n))
      bytesRead += n
      countRead(n)
    }
    return { sha256: hash.digest('hex'), bytesRead, error: null }
  } catch (err) {
    return { sha256: null, bytesRead, error: describeError(err) }
  } finally {
    // The read in flight writes into a buffer the next file uses, and into this descriptor: it ends first.
    await pending?.catch(() => {})
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
      const n = await readChunk(fd, buffers[0], bytesRead)
      if (n > 0) {
        hash.update(buffers[0].subarray(0, n))
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
  for (const file of files) results.push(await hashFile(file))
  parentPort.postMessage({ type: 'done', bytes: unreportedBytes, results })
  unreportedBytes = 0
})
