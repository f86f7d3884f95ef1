// The server step of model promote and model rollback. vLLM loads its weights when it starts and never
// notices a link flip, so once the alias points at the new version VLLM_RESTART_COMMAND restarts it; with
// VLLM_URL it must then answer GET /health with 200 within VLLM_READY_TIMEOUT and list the new version in
// GET /v1/models. A failure fails the task: the runner undoes the switch, and the restart registered with
// ctx.afterUndo follows, so vLLM serves the previous version again. The restart is journaled as well: after
// a SIGKILL, the next run undoes the switch and restarts vLLM on the previous version (registerRecovery).
import { realpath } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { z } from 'zod'
import { registerRecovery, type RecoveryContext } from '../core/runner.ts'
import type { TaskContext } from '../core/task.ts'
import { aliasLink } from './promote.ts'

/** One request's limit: a server that is up answers these two endpoints at once. */
const REQUEST_TIMEOUT_MS = 5000
const POLL_INTERVAL_MS = 1000

/** The part of vLLM's GET /v1/models (OpenAI's list) that tells what it serves: `root` is its --model argument. */
const modelsSchema = z.object({ data: z.array(z.object({ id: z.string(), root: z.string().nullish() })) })

const seconds = (since: number) => Math.round((Date.now() - since) / 1000)

/** Both limits on one request: its own timeout, and the run's interruption when given. */
const requestSignal = (signal: AbortSignal | null, ms: number) => (signal ? AbortSignal.any([signal, AbortSignal.timeout(ms)]) : AbortSignal.timeout(ms))

const timedOut = (err: unknown) => (err as Error).name === 'TimeoutError'

/** Why a request given `limitMs` got no answer, in a few words (fetch hides the system error in `cause`). */
function unanswered(err: unknown, limitMs: number): string {
  const e = err as Error & { cause?: { code?: string; message?: string } }
  if (timedOut(e)) return `no answer within ${limitMs / 1000} s`
  return e.cause?.code ?? e.cause?.message ?? e.message
}

/** Runs VLLM_RESTART_COMMAND, its output to the run log; throws one line when it fails. */
async function restart(ctx: RecoveryContext, signal: AbortSignal | null): Promise<void> {
  const { restartCommand, readyTimeout } = ctx.settings.vllm
  ctx.progress(`restarting vLLM (VLLM_RESTART_COMMAND)`)
  const out = await ctx.$({ nothrow: true, timeout: readyTimeout * 1000, ...(signal ? { signal } : {}) })`bash -c ${restartCommand}`
  ctx.log('vllm-restart', { exit: out.exitCode, signal: out.signal, stdout: out.stdout.slice(-4000), stderr: out.stderr.slice(-4000) })
  if (signal?.aborted) throw signal.reason
  if (out.exitCode === 0) return
  const why = out.exitCode === null ? `killed by ${out.signal} after VLLM_READY_TIMEOUT=${readyTimeout} s` : `exit ${out.exitCode}`
  const said = out.stderr.trim().split('\n').at(-1) || out.stdout.trim().split('\n').at(-1)
  throw new Error(`the restart failed: VLLM_RESTART_COMMAND ended with ${why}${said ? ` (${said})` : ''}`)
}

/** Polls GET /health until it answers 200; returns the seconds waited, or throws one line at VLLM_READY_TIMEOUT. */
async function waitReady(ctx: RecoveryContext, url: string, signal: AbortSignal | null): Promise<number> {
  const { readyTimeout } = ctx.settings.vllm
  const started = Date.now()
  const deadline = started + readyTimeout * 1000
  let last = 'no answer'
  for (;;) {
    const limit = Math.max(1, Math.min(REQUEST_TIMEOUT_MS, deadline - Date.now()))
    try {
      const res = await fetch(`${url}/health`, { signal: requestSignal(signal, limit) })
      await res.body?.cancel()
      if (res.status === 200) return seconds(started)
      last = `HTTP ${res.status}`
    } catch (err) {
      if (signal?.aborted) throw signal.reason
      // A request the deadline cut short says less than the answer before it.
      if (!(timedOut(err) && limit < REQUEST_TIMEOUT_MS && last !== 'no answer')) last = unanswered(err, limit)
    }
    if (Date.now() >= deadline) throw new Error(`vLLM was not ready: GET ${url}/health did not answer 200 within VLLM_READY_TIMEOUT=${readyTimeout} s (last: ${last})`)
    ctx.progress(`waiting for vLLM: ${seconds(started)} s of ${readyTimeout} (GET ${url}/health: ${last})`)
    await sleep(Math.min(POLL_INTERVAL_MS, deadline - Date.now()), undefined, signal ? { signal } : {}).catch(() => {
      throw signal?.reason
    })
  }
}

/** The roots GET /v1/models lists; throws one line when it does not answer with the list. */
async function servedRoots(url: string, apiKey: string | undefined, signal: AbortSignal): Promise<string[]> {
  const endpoint = `${url}/v1/models`
  let body: unknown
  try {
    // vLLM started with --api-key answers /v1/models only with it; /health always.
    const res = await fetch(endpoint, { signal: requestSignal(signal, REQUEST_TIMEOUT_MS), headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {} })
    if (res.status !== 200) {
      await res.body?.cancel()
      const hint = res.status === 401 ? (apiKey ? ': VLLM_API_KEY is not the key vLLM was started with' : ': vLLM wants its --api-key; set VLLM_API_KEY to it') : ''
      throw new Error(`vLLM is up but GET ${endpoint} answered HTTP ${res.status}${hint}`)
    }
    body = await res.json().catch(() => {
      throw new Error(`GET ${endpoint} did not answer JSON`)
    })
  } catch (err) {
    if (signal.aborted) throw signal.reason
    if (err instanceof TypeError || timedOut(err)) throw new Error(`vLLM answered /health but not GET ${endpoint}: ${unanswered(err, REQUEST_TIMEOUT_MS)}`)
    throw err
  }
  const parsed = modelsSchema.safeParse(body)
  if (!parsed.success) throw new Error(`GET ${endpoint} did not answer a list of models ({"data": [{"id", "root"}, ...]})`)
  return parsed.data.data.map((m) => m.root ?? `(no root for ${m.id})`)
}

/** The restart after the switch was undone, for the version that is back; one line for the rollback report. */
async function restartPrevious(ctx: RecoveryContext): Promise<string> {
  const { url } = ctx.settings.vllm
  await restart(ctx, null)
  return url ? `ran VLLM_RESTART_COMMAND again: vLLM answered GET ${url}/health after ${await waitReady(ctx, url, null)} s` : 'ran VLLM_RESTART_COMMAND again'
}
const RESTART_PREVIOUS = 'vllm-restart-previous'
registerRecovery(RESTART_PREVIOUS, restartPrevious)

/**
 * The server step after `alias` was switched to the directory `live`. Returns null when vLLM serves it (or
 * no restart command is set), else one line saying which step failed and what was seen. In check mode it
 * only says what would run.
 */
export async function serveVersion(ctx: TaskContext, alias: string, live: string): Promise<string | null> {
  const { restartCommand, url, readyTimeout } = ctx.settings.vllm
  if (!restartCommand) return null
  const link = aliasLink(ctx.settings, alias)
  if (ctx.check) {
    ctx.detail(`would run VLLM_RESTART_COMMAND: ${restartCommand}`)
    if (url) ctx.detail(`would wait up to ${readyTimeout} s for GET ${url}/health to answer 200, then look for ${link} or ${live} as a root in GET ${url}/v1/models`)
    return null
  }
  // Registered before the first restart: a restart that failed half way has stopped the old version too.
  await ctx.afterUndo('VLLM_RESTART_COMMAND again, for the previous version', () => restartPrevious(ctx), RESTART_PREVIOUS)
  try {
    await restart(ctx, ctx.signal)
    if (!url) {
      ctx.detail('vLLM restarted; its readiness was not checked (VLLM_URL is not set)')
      return null
    }
    const waited = await waitReady(ctx, url, ctx.signal)
    const roots = await servedRoots(url, ctx.settings.vllm.apiKey, ctx.signal)
    // vLLM's root is its --model argument as given: the alias's link, or the directory it leads to (what
    // CITADEL_MODEL_<ALIAS> of storage-env.sh holds), or that directory's real path.
    const accepted = new Set([link, live, await realpath(live).catch(() => live)])
    const serving = roots.find((r) => path.isAbsolute(r) && accepted.has(path.resolve(r)))
    if (!serving) return `vLLM does not serve the new version of ${alias}: GET ${url}/v1/models lists root ${roots.join(', ') || '(none)'}, expected ${link} or ${live}`
    ctx.detail(`vLLM answered GET ${url}/health after ${waited} s and serves ${serving}`)
    return null
  } catch (err) {
    if (ctx.signal.aborted) throw err
    return (err as Error).message
  }
}
