// The vocabulary every health check shares: a severity, and a problem that names its check, a stable key
// (the monitor follows each key from sample to sample) and the reason in words an operator reads at 3 a.m.
import { z } from 'zod'

export type Severity = 'ok' | 'warning' | 'critical'

export const CHECKS = ['roots', 'filesystems', 'symlinks', 'models', 'smart', 'backups', 'perf'] as const

export interface Problem {
  check: (typeof CHECKS)[number]
  severity: 'warning' | 'critical'
  /** Stable across samples of the same condition, e.g. "filesystems:/mnt/citadel-models:disk". */
  key: string
  message: string
}

export const severitySchema = z.enum(['ok', 'warning', 'critical']) satisfies z.ZodType<Severity>

export const problemSchema = z.strictObject({
  check: z.enum(CHECKS),
  severity: z.enum(['warning', 'critical']),
  key: z.string().describe('stable for one condition from sample to sample: the monitor follows it'),
  message: z.string(),
}) satisfies z.ZodType<Problem>

/** A condition the monitor has confirmed as not ok, kept across restarts. */
export interface Condition { check: Problem['check']; severity: Severity; since: string; message: string }

const RANK: Record<Severity, number> = { ok: 0, warning: 1, critical: 2 }

export const worse = (a: Severity, b: Severity): Severity => (RANK[a] >= RANK[b] ? a : b)
export const rank = (s: Severity): number => RANK[s]

/** The overall severity of a set of problems. */
export const overall = (problems: readonly Problem[]): Severity => problems.reduce<Severity>((acc, p) => worse(acc, p.severity), 'ok')
