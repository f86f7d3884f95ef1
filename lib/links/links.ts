// Inspecting and fixing the expected links, shared by create-symlinks, verify-symlinks and
// repair-symlinks. Plan first (Stow-style): conflicts are reported together before anything changes.
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { asideName, assertInside, atomicSymlink, describeEntry, entryCount, lstatOrNull, moveNoReplace } from '../infra/fsx.ts'
import { expectedLinks, type ExpectedLink } from '../infra/layout.ts'
import type { Settings } from '../infra/config.ts'
import type { TaskContext } from '../core/task.ts'

export type Verdict = 'ok' | 'missing' | 'wrong-target' | 'broken' | 'not-a-link'

/** What stands at a link's target, symlinks followed: vLLM loads a model only from a directory. */
export type TargetKind = 'directory' | 'file' | 'missing' | 'other'

export interface LinkState extends ExpectedLink {
  verdict: Verdict
  targetKind: TargetKind
  /** What is there now: the link's text, or what kind of entry stands in its place. */
  actual: string | null
  targetExists: boolean
  /** Whether this verdict is a problem; a model not downloaded yet is reported but is not one. */
  failing: boolean
  reason: string
}

async function targetKind(p: string): Promise<TargetKind> {
  const st = await fs.stat(p).catch(() => null)
  return !st ? 'missing' : st.isDirectory() ? 'directory' : st.isFile() ? 'file' : 'other'
}

async function inspectLink(link: ExpectedLink): Promise<LinkState> {
  const st = await lstatOrNull(link.path)
  const kind = await targetKind(link.target)
  const targetExists = kind === 'directory'
  const notDownloaded = link.model !== undefined && !targetExists
  const absent = kind === 'missing' ? 'is not there yet' : `is ${kind === 'file' ? 'a file' : 'not a directory'}`
  const base = { ...link, targetExists, targetKind: kind }
  if (!st) {
    return { ...base, verdict: 'missing', actual: null, failing: !notDownloaded, reason: notDownloaded ? `model directory ${link.target} ${absent}` : 'no link' }
  }
  if (!st.isSymbolicLink()) {
    return { ...base, verdict: 'not-a-link', actual: describeEntry(st), failing: true, reason: `${describeEntry(st)} stands where the link belongs` }
  }
  const actual = await fs.readlink(link.path)
  if (path.resolve(path.dirname(link.path), actual) !== link.target) {
    return { ...base, verdict: 'wrong-target', actual, failing: true, reason: `points to ${actual}, expected ${link.target}` }
  }
  if (!targetExists) {
    return { ...base, verdict: 'broken', actual, failing: !notDownloaded, reason: notDownloaded ? `model directory ${link.target} ${absent}` : `target ${link.target} is missing` }
  }
  return { ...base, verdict: 'ok', actual, failing: false, reason: 'points right' }
}

export const inspectLinks = (s: Settings) => Promise.all(expectedLinks(s).map(inspectLink))

/** A link's verdict as reports carry it (verify-symlinks' data, the health report). */
export interface LinkHealth { path: string; expected: string; actual: string | null; verdict: Verdict; failing: boolean; reason: string; model: string | null; target_kind: TargetKind }

export const linkHealth = (states: LinkState[]): LinkHealth[] =>
  states.map((s) => ({ path: s.path, expected: s.target, actual: s.actual, verdict: s.verdict, failing: s.failing, reason: s.reason, model: s.model ?? null, target_kind: s.targetKind }))

/**
 * In check mode nothing earlier in the run was really changed, so a link an earlier task would create
 * or retarget (or whose target it would create) is judged as it would be: not a failure.
 */
export function allowPlanned(states: LinkState[], ctx: TaskContext): LinkState[] {
  if (!ctx.check) return states
  const planned = new Set(ctx.earlierChanges.map((c) => c.path))
  return states.map((s) =>
    s.failing && planned.has(s.path) || (s.verdict === 'broken' && planned.has(s.target))
      ? { ...s, failing: false, reason: `${s.reason}; an earlier task of this run would fix it (check mode)` }
      : s)
}

export interface LinkPlan {
  states: LinkState[]
  fixes: LinkState[]
  conflicts: string[]
  /** Model links left alone because the model is not downloaded yet, with why. */
  waiting: string[]
  /** Structural links (models, downloads, staging) whose target directory is missing. */
  missingTargets: LinkState[]
}

/** Inspects every link and decides what to fix. Real files or directories in the way are conflicts unless --force. */
export async function planLinks(ctx: TaskContext): Promise<LinkPlan> {
  const states = await inspectLinks(ctx.settings)
  const plan: LinkPlan = { states, fixes: [], conflicts: [], waiting: [], missingTargets: [] }
  for (const s of states) {
    if (s.model === undefined && !s.targetExists) plan.missingTargets.push(s)
    if (s.verdict === 'ok' || s.verdict === 'broken') continue
    if (s.model !== undefined && !s.targetExists) plan.waiting.push(`${s.model}: ${s.reason}; its link is made once it is`)
    else if (s.verdict === 'not-a-link' && !(ctx.force || ctx.settings.symlinkForceRecreate)) {
      const entries = (await lstatOrNull(s.path))?.isDirectory() ? ` with ${await entryCount(s.path)} entries` : ''
      plan.conflicts.push(`${s.path} is ${s.actual}${entries}, not a link to ${s.target}: move it away yourself, or rerun with --force (or SYMLINK_FORCE_RECREATE=true) to have it moved aside to ${s.path}.citadel-aside-<time> (an empty directory is replaced)`)
    } else plan.fixes.push(s)
  }
  return plan
}

/** Applies the planned fixes in order, showing progress: a big MODEL_REGISTRY makes this the slow part. */
export async function fixLinks(ctx: TaskContext, fixes: LinkState[]): Promise<void> {
  for (const [i, state] of fixes.entries()) {
    ctx.progress(`${i + 1}/${fixes.length} ${state.path}`)
    await fixLink(ctx, state)
  }
}

/** Makes one planned link right through ctx.apply: atomic, journaled, nothing deleted but an empty directory. */
async function fixLink(ctx: TaskContext, s: LinkState): Promise<void> {
  assertInside(ctx.settings.appRoot, s.path)
  if (s.verdict === 'missing' || s.verdict === 'wrong-target') {
    await ctx.ensureLink(s.path, s.target)
    return
  }
  const st = await lstatOrNull(s.path)
  if (st?.isDirectory() && (await entryCount(s.path)) === 0) {
    return ctx.apply({ path: s.path, action: 'replace empty directory with link', before: 'empty directory', after: s.target }, { op: 'mkdir', path: s.path, mode: st.mode & 0o7777 }, async () => {
      await fs.rmdir(s.path)
      await atomicSymlink(s.target, s.path)
    })
  }
  const aside = await asideName(s.path)
  await ctx.apply({ path: s.path, action: 'move aside', before: s.actual, after: aside }, { op: 'move-back', from: aside, to: s.path }, () => moveNoReplace(s.path, aside))
  ctx.warn(`${ctx.check ? 'would move' : 'moved'} ${s.actual} at ${s.path} aside to ${aside}`)
  await ctx.apply({ path: s.path, action: 'create link', before: null, after: s.target }, { op: 'remove-link', path: s.path }, () => atomicSymlink(s.target, s.path))
}
