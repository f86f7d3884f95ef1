// Brings a model onto the model disk, ready for model promote: copied from SOURCE (a local directory,
// [user@]host:/path over ssh, or hf:ORG/NAME[@REVISION] from the Hugging Face cache, hard-linked when on the
// same filesystem) into downloads/<name>.partial, checked against the source, then renamed into
// staging/<name>. A copy cut short (a kill, MODEL_DOWNLOAD_TIMEOUT) leaves the partial for the next fetch
// to continue; nothing is ever deleted, and nothing reaches staging/ unchecked (lib/models/fetch.ts).
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { z } from 'zod'
import { defineTask, isInternalError, runWhenMain, type TaskContext } from '../lib/core/task.ts'
import { wholeNumber } from '../lib/infra/config.ts'
import { bytes, count, progressLine, summarize } from '../lib/infra/format.ts'
import { describeEntry, isInside, lstatOrNull, moveNoReplace } from '../lib/infra/fsx.ts'
import { rsyncCopy } from '../lib/backup/rsync.ts'
import { defaultName, linkable, linkBlobs, listSource, progressOf, sizesUnder, sourceArg, spaceShortfall, checkBlobs, verifyFetched, type Listing, type Source } from '../lib/models/fetch.ts'
import { dirName, stagingDir } from '../lib/models/promote.ts'

/** Hashing threads beside a copy: rsync's sender and receiver keep a core each. */
const COPY_LEAVES_HASHING = Math.max(1, os.availableParallelism() - 2)

/** The copy ran out of MODEL_DOWNLOAD_TIMEOUT. */
class DownloadTimeout extends Error {}

/** Copies (or links) the source into `partial`, which exists; throws DownloadTimeout when the time is up. */
async function copyInto(ctx: TaskContext<{ bwlimit?: number }>, source: Source, listing: Listing, partial: string, link: boolean): Promise<void> {
  const limit = ctx.settings.modelDownloadTimeout
  const timer = new AbortController()
  const timeout = setTimeout(() => timer.abort(new DownloadTimeout()), limit * 1000)
  const signal = AbortSignal.any([ctx.signal, timer.signal])
  const started = Date.now()
  try {
    if (link) {
      ctx.progress(`hard-linking ${count(listing.files.length, 'file')} from the Hugging Face cache`)
      await linkBlobs(listing, partial, signal)
      return
    }
    const result = await rsyncCopy(ctx.$, {
      src: listing.copyFrom,
      dest: partial,
      linkDest: null,
      rsh: listing.rsh,
      bandwidthLimit: ctx.args.bwlimit,
      resume: true,
      copyLinks: true,
      signal,
      onBytes: (done) => ctx.progress(progressLine(`copying ${source.label}:`, done, listing.bytes, started)),
    })
    if (result.error) throw new Error(`copying ${source.label} failed: ${result.error}; what arrived is kept in ${partial} for the next fetch`)
    if (result.warnings.length) ctx.warn(`${source.label} changed during the copy: ${summarize(result.warnings)}`)
  } catch (err) {
    if (timer.signal.aborted && !ctx.signal.aborted) throw timer.signal.reason
    throw err
  } finally {
    clearTimeout(timeout)
  }
}

const task = defineTask({
  name: 'model-fetch',
  description: 'Copy a model from a local directory, [user@]host:/path or hf:ORG/NAME[@REVISION] into downloads/, check it against the source, and put it in staging/ for model promote',
  tags: ['models'],
  roots: ['models'],
  args: z.object({
    source: sourceArg.meta({ positional: true, value: 'SOURCE', description: 'a local directory, [user@]host:/path (rsync over ssh with the BACKUP_SSH_* settings) or hf:ORG/NAME[@REVISION] from the Hugging Face cache (HF_HUB_CACHE)' }),
    name: dirName.optional().meta({ value: 'DIR', description: "the model's directory name in staging/ (default: the source's basename; for hf: NAME, @REVISION appended when given)" }),
    bwlimit: wholeNumber(1, '50000', 'KiB per second').optional().meta({ value: 'KIB', description: "KiB per second the copy may take (rsync --bwlimit), so a fetch leaves vLLM its share of the disk and the network; default: no limit" }),
  }),
  async run(ctx) {
    const { settings: s, args } = ctx
    const { source } = args
    const name = args.name ?? defaultName(source)
    const named = dirName.safeParse(name)
    if (!named.success) return ctx.fail(`cannot name the model after ${source.label} (${JSON.stringify(name)}): give --name DIR, one path component`)
    const downloads = path.join(s.modelsRoot, 'downloads')
    for (const dir of [downloads, stagingDir(s)]) {
      const st = await lstatOrNull(dir)
      if (!st?.isDirectory()) return ctx.fail(`${dir} is ${describeEntry(st)}, expected the directory of the storage layout: run \`citadel run initial-setup\``)
    }
    const partial = path.join(downloads, `${name}.partial`)
    const staged = path.join(stagingDir(s), name)
    const live = path.join(s.modelsActive, name)
    if (source.kind === 'local') {
      // A copy into itself would never end, or would copy what it is writing.
      const clash = [partial, staged].find((p) => p === source.dir || isInside(source.dir, p) || isInside(p, source.dir))
      if (clash) return ctx.fail(`${source.label} overlaps ${clash}, where this fetch writes: fetch from a directory outside it, or give another --name`)
    }
    const liveSt = await lstatOrNull(live)
    if (liveSt) return ctx.fail(`${live} is ${describeEntry(liveSt)} already: a model of that name is active; give another --name`)
    try {
      ctx.progress(`listing ${source.label}`)
      const listing = await listSource(ctx.$, s, source, ctx.signal)
      if (!listing.files.length) return ctx.fail(`${source.label} holds no files: expected a model directory`)
      const summary = `${count(listing.files.length, 'file')}, ${bytes(listing.bytes)}`

      const stagedSt = await lstatOrNull(staged)
      if (stagedSt) {
        const same = stagedSt.isDirectory() && (await verifyFetched(staged, listing)).length === 0
        if (same) return ctx.finish(`${name} is in staging/ already as ${source.label} holds it (${summary})`, { name, path: staged, files: listing.files.length, bytes: listing.bytes })
        return ctx.fail(`${staged} is ${describeEntry(stagedSt)} already and differs from ${source.label}: promote or remove it, or give another --name`)
      }
      const partialSt = await lstatOrNull(partial)
      if (partialSt && !partialSt.isDirectory()) return ctx.fail(`${partial} is ${describeEntry(partialSt)}, where the fetch keeps its partial copy: move it away`)

      const link = source.kind === 'hf' && (await linkable(listing, downloads))
      const present = await sizesUnder(partial)
      const { held } = progressOf(listing, present)
      if (!link) {
        const shortfall = await spaceShortfall(listing, present, downloads)
        if (shortfall) return ctx.fail(shortfall)
      }
      const copied = link ? 0 : listing.bytes - held
      const t0 = Date.now()
      // The blobs are hashed while the copy runs; stopped when the copy stops.
      const hashing = new AbortController()
      let copying = true
      const blobCheck = source.kind === 'hf' && !ctx.check
        ? checkBlobs(listing, { signal: AbortSignal.any([ctx.signal, hashing.signal]), threads: link ? undefined : COPY_LEAVES_HASHING, onHash: (done, total) => {
          if (!copying) ctx.progress(progressLine('hashing the blobs', done, total, t0))
        } })
        : Promise.resolve([])
      // Awaited once the copy is done; a copy that fails first must not leave it rejected unheard.
      blobCheck.catch(() => {})
      try {
        await ctx.apply({ path: partial, action: 'fetch model', before: partialSt ? `partial copy: ${bytes(held)} of ${bytes(listing.bytes)}` : null, after: source.label }, null, async () => {
          if (!partialSt) await fs.mkdir(partial, { mode: 0o755 })
          await copyInto(ctx, source, listing, partial, link)
        })
      } catch (err) {
        hashing.abort()
        if (!(err instanceof DownloadTimeout)) throw err
        const { held: now } = progressOf(listing, await sizesUnder(partial))
        return ctx.failKeepingChanges(`the copy from ${source.label} ran longer than MODEL_DOWNLOAD_TIMEOUT=${s.modelDownloadTimeout} seconds and was stopped; ${bytes(now)} of ${bytes(listing.bytes)} are kept in ${partial}: the next fetch continues from there (or raise MODEL_DOWNLOAD_TIMEOUT)`, { name, partial, held_bytes: now, bytes: listing.bytes })
      }
      copying = false
      const copySeconds = (Date.now() - t0) / 1000
      const data = { name, source: source.label, path: staged, files: listing.files.length, bytes: listing.bytes, copied_bytes: copied, resumed_bytes: link ? 0 : held, hard_linked: link, copy_seconds: copySeconds, verify_seconds: 0 }

      if (!ctx.check) {
        const problems = [...(await blobCheck), ...(await verifyFetched(partial, listing))]
        // What the check added after the copy: the hashing it overlapped cost nothing beyond it.
        data.verify_seconds = (Date.now() - t0) / 1000 - copySeconds
        if (problems.length) {
          const what = `${partial} does not match ${source.label}: ${summarize(problems, 2)}`
          if (s.modelVerificationEnabled) return ctx.failKeepingChanges(`${what}; left in downloads/, not staged (MODEL_VERIFICATION_ENABLED=true)`, data)
          ctx.warn(`${what}; staged anyway, as MODEL_VERIFICATION_ENABLED=false`)
        }
      }
      await ctx.apply({ path: staged, action: 'stage model', before: null, after: partial }, { op: 'move-back', from: staged, to: partial }, () => moveNoReplace(partial, staged))
      const how = link ? 'hard-linked from the Hugging Face cache' : `${bytes(copied)} ${ctx.check ? 'to copy' : 'copied'}${held ? `, ${bytes(held)} there from an earlier fetch` : ''}`
      return ctx.finish(`${ctx.check ? 'would fetch' : 'fetched'} ${source.label} into ${staged}: ${summary} (${how})`, data)
    } catch (err) {
      if (ctx.signal.aborted || isInternalError(err)) throw err
      return ctx.fail((err as Error).message)
    }
  },
})

export default task
runWhenMain(import.meta)
