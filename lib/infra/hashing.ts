// SHA-256 of many files on worker threads (hash-worker.js). Biggest files go first, one per message, so a
// huge file never starts last on a lone thread; small files travel in batches so thousands of them cost
// few messages.
import os from 'node:os'
import path from 'node:path'
import { Worker } from 'node:worker_threads'
import { fsPath, projectRoot } from './fsx.ts'

/** `file` is absolute; `size` is what the caller expects, used to schedule and to weigh progress. */
export interface HashJob { file: string; size: number }
export interface HashOutcome { file: string; sha256: string | null; bytesRead: number; error: string | null }
export interface HashOptions {
  /** Default: os.availableParallelism(); never more than there are batches. */
  threads?: number
  onProgress?: (bytesDone: number, filesDone: number) => void
  /** Each file's outcome as soon as it is known, with its index in `jobs`. */
  onOutcome?: (index: number, outcome: HashOutcome) => void
  /** Aborting terminates the workers and rejects with the signal's reason. */
  signal?: AbortSignal
}

const BATCH_MAX_FILES = 256
const BATCH_MAX_BYTES = 32 * 1024 * 1024

type WorkerMessage =
  | { type: 'progress'; bytes: number }
  | { type: 'done'; bytes: number; results: Omit<HashOutcome, 'file'>[] }

/** Job indices per message, biggest first; a file of BATCH_MAX_BYTES or more travels alone. */
function planBatches(jobs: HashJob[]): number[][] {
  const bySizeDescending = jobs.map((_, i) => i).sort((a, b) => jobs[b].size - jobs[a].size)
  const batches: number[][] = []
  let batch: number[] = []
  let batchBytes = 0
  for (const i of bySizeDescending) {
    if (batch.length === BATCH_MAX_FILES || (batch.length > 0 && batchBytes + jobs[i].size > BATCH_MAX_BYTES)) {
      batches.push(batch)
      batch = []
      batchBytes = 0
    }
    batch.push(i)
    batchBytes += jobs[i].size
  }
  if (batch.length > 0) batches.push(batch)
  return batches
}

/** Outcomes in the order of `jobs`; a file that cannot be read gets an error, it does not reject. */
export function hashFiles(jobs: HashJob[], options: HashOptions = {}): Promise<HashOutcome[]> {
  const { onProgress, onOutcome, signal } = options
  if (signal?.aborted) return Promise.reject(signal.reason)
  const batches = planBatches(jobs)
  if (batches.length === 0) return Promise.resolve([])
  const threads = Math.max(1, Math.min(options.threads ?? os.availableParallelism(), batches.length))
  // Beside the sources, not beside this module: the running code may be a bundle in a cache directory.
  const workerFile = path.join(projectRoot(), 'lib', 'infra', 'hash-worker.js')

  return new Promise((resolve, reject) => {
    const outcomes: HashOutcome[] = new Array(jobs.length)
    const workers: Worker[] = []
    let nextBatch = 0
    let bytesDone = 0
    let filesDone = 0
    let settled = false

    // Settles only once every worker is gone, so no thread outlives the promise.
    const settle = (outcome: { error: unknown } | null) => {
      if (settled) return
      settled = true
      signal?.removeEventListener('abort', onAbort)
      void Promise.all(workers.map((worker) => worker.terminate())).then(() => (outcome ? reject(outcome.error) : resolve(outcomes)))
    }
    const onAbort = () => settle({ error: signal!.reason })
    signal?.addEventListener('abort', onAbort, { once: true })

    const startWorker = () => {
      const worker = new Worker(workerFile)
      workers.push(worker)
      let batch: number[] | undefined
      const sendNextBatch = () => {
        batch = batches[nextBatch++]
        if (batch) worker.postMessage({ files: batch.map((i) => fsPath(jobs[i].file)) })
      }
      worker.on('message', (message: WorkerMessage) => {
        if (settled) return
        bytesDone += message.bytes
        if (message.type === 'done') {
          message.results.forEach((result, k) => (outcomes[batch![k]] = { file: jobs[batch![k]].file, ...result }))
          filesDone += batch!.length
        }
        // A throwing callback rejects the promise rather than leaving the workers running.
        try {
          if (message.type === 'done') for (const i of batch!) onOutcome?.(i, outcomes[i]!)
          onProgress?.(bytesDone, filesDone)
        } catch (err) {
          settle({ error: err })
          return
        }
        if (filesDone === jobs.length) settle(null)
        else if (message.type === 'done') sendNextBatch()
      })
      worker.on('error', (err) => settle({ error: new Error(`hashing worker crashed: ${err.message}`, { cause: err }) }))
      worker.on('exit', (code) => settle({ error: new Error(`hashing worker exited with code ${code} before all files were hashed`) }))
      sendNextBatch()
    }

    try {
      for (let i = 0; i < threads; i++) startWorker()
    } catch (err) {
      settle({ error: err })
    }
  })
}

/** A hash of a file still being written; `stop` says its writer has ended, whether or not the file is whole. */
export interface Tail { stop: () => void; outcome: Promise<HashOutcome & { ino: number | null }> }

/**
 * Hashes `file` on a thread of its own while another process writes it from start to end, until it stands
 * renamed as `final` and is read to its end (see tailFile in hash-worker.js). After `stop`, a file not yet
 * renamed gets an error instead of a hash.
 */
export function tailHash(file: string, final: string, signal: AbortSignal): Tail {
  const worker = new Worker(path.join(projectRoot(), 'lib', 'infra', 'hash-worker.js'))
  let onAbort = () => {}
  const outcome = new Promise<HashOutcome & { ino: number | null }>((resolve, reject) => {
    onAbort = () => reject(signal.reason)
    if (signal.aborted) return onAbort()
    signal.addEventListener('abort', onAbort, { once: true })
    worker.on('message', (message: WorkerMessage) => {
      if (message.type === 'done') resolve({ file: final, ...(message.results[0] as Omit<HashOutcome, 'file'> & { ino: number | null }) })
    })
    worker.on('error', (err) => reject(new Error(`hashing worker crashed: ${err.message}`, { cause: err })))
    worker.on('exit', (code) => reject(new Error(`hashing worker exited with code ${code} before the file was hashed`)))
    worker.postMessage({ tail: fsPath(file), final: fsPath(final) })
  }).finally(() => {
    signal.removeEventListener('abort', onAbort)
    void worker.terminate()
  })
  return { stop: () => worker.postMessage({ stop: true }), outcome }
}
