// What citadel reads back of the files it wrote earlier. A file cut short by a crash or a full disk, or
// edited by hand, is refused here with one line naming the file and the first thing wrong with it, so no
// code further on works from a shape it only assumed.
import { z } from 'zod'

const count = z.number().int().nonnegative()
const sha256 = z.string().regex(/^[0-9a-f]{64}$/, 'expected 64 lowercase hex digits')

const problem = z.object({
  kind: z.enum(['mismatch', 'missing', 'size', 'extra', 'link', 'blob-name', 'unreadable', 'list']),
  path: z.string(),
  detail: z.string(),
})

const verification = z.object({
  at: z.iso.datetime(),
  rate: z.number().positive().max(1).describe('the share of bytes and files hashed'),
  seed: count,
  seeded: z.boolean().describe('true under --seed N: the sample depended on N alone'),
  files_checked: count,
  files_hashed: count,
  bytes_hashed: count,
  ok: z.boolean(),
  problems: z.array(problem),
  transient: z.array(z.string()).describe('files whose first hash disagreed and second agreed: read errors, not corruption'),
  healed: z.array(z.object({ path: z.string(), from: z.string() })).optional()
    .describe('files of problems that --repair replaced with a copy hashing as the manifest says, and where it came from (the active models, a backup, host:backup)'),
})

const restoreRecord = z.object({
  at: z.iso.datetime(),
  what: z.array(z.string()).describe('the model directories restored, or the paths under data/ given with --path'),
  to: z.string().describe('the directory restored into: the active models directory, --to DIR, or a drill\'s scratch directory'),
  drill: z.boolean().describe('a restore drill: restored into scratch, verified, removed'),
  bytes_copied: count,
  bytes_reused: count.describe('bytes of files already right in the target, hard-linked rather than copied'),
  files_verified: count.describe('files hashed against SHA256SUMS'),
  duration_ms: count,
  ok: z.boolean(),
  error: z.string().nullable(),
  from_elsewhere: z.record(z.string(), z.string()).describe('files whose copy in this backup was bad, restored from the named backup instead'),
})

/** backup.json. Loose: fields a later citadel adds survive when this one rewrites the file. */
export const backupMetaSchema = z.looseObject({
  format: z.literal(1),
  name: z.string(),
  type: z.enum(['full', 'incremental']),
  source: z.string().describe('the directory backed up (each source is its own chain)'),
  started: z.iso.datetime().describe('the time in the name, UTC'),
  finished: z.iso.datetime(),
  files: count,
  bytes: count,
  symlinks: count,
  parent: z.string().nullable().describe('the backup an incremental hard-links unchanged files to; null for a full'),
  rsync: z.looseObject({ exit_code: z.number().int().describe('0, or 24 when source files vanished during the copy'), warnings: z.array(z.string()) }),
  hashed_bytes: count.describe('bytes read to write SHA256SUMS (0 for an unchanged incremental)'),
  reused_hashes: count.describe("manifest entries taken from the parent's for files sharing its inode"),
  verifications: z.array(verification).describe('every backup verify of this copy, oldest first'),
  /** Files whose source changed while they were copied; absent in backups made before it was recorded. */
  changed_during_copy: z.array(z.string()).optional().describe('files that changed while they were copied: back up again once nothing writes to them'),
  /** When the walk of the source began; absent in backups made before it was recorded. */
  restores: z.array(restoreRecord).optional().describe('every restore and restore drill from this backup, oldest first'),
  source_listed_at: z.iso.datetime().optional().describe('when the walk of the source began: a file whose ctime is older than this and unchanged since is linked to this backup by the next incremental without being read'),
  rotten: z.array(z.object({
    path: z.string(),
    sha256_now: sha256.describe('what the live file hashed to when this backup was made'),
    sha256_kept: sha256.describe('what the copy in this backup hashes to'),
    from: z.string().nullable().describe('the backup the kept copy came from; null when its copy was damaged too, and this backup holds the live bytes'),
  })).optional().describe('live files the model disk changed without a write (same inode, ctime and size as the previous backup saw, other bytes): bit rot; this backup holds their last good copy, which citadel backup restore --path puts back'),
})

/** files.json: sizes of the files and targets of the links under data/ (its `source` is read by link-unchanged.ts). */
export const catalogSchema = z.object({
  files: z.array(z.tuple([z.string(), count])).describe('[path under data/, size in bytes] of every regular file'),
  symlinks: z.array(z.tuple([z.string(), z.string()])).describe('[path under data/, target] of every symlink'),
  attrs: z.array(z.tuple([z.string(), count, z.number()])).optional().describe('[path, permission bits, mtime in ms] of every regular file as copied, which a restore checks'),
  source: z.array(z.tuple([z.string(), count, z.number()])).optional().describe('[path, inode, ctime in ms] of every source file as the walk saw it, for the next incremental'),
})

/** verify-state.json: when each file last hashed as the manifest says, path → ISO time. */
export const verifyStateSchema = z.record(z.string(), z.iso.datetime()).describe('path under data/ → when it last hashed as the manifest says')

/**
 * Parses `text`, the content of `file`, as JSON of `schema`; throws one line naming the file and what is
 * wrong (JSON cut short, or the first field of the wrong shape). `what` names what the file should be.
 */
export function parseFile<T>(schema: z.ZodType<T>, file: string, text: string, what = 'what citadel wrote'): T {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (err) {
    throw new Error(`${file} is not valid JSON (${text === '' ? 'empty' : (err as Error).message}): it was cut short or edited`)
  }
  return checkShape(schema, file, value, what)
}

/** `value`, read from `file` (or one line of it), as `schema` says; throws one line naming the file and the first field wrong. */
export function checkShape<T>(schema: z.ZodType<T>, file: string, value: unknown, what = 'what citadel wrote'): T {
  const parsed = schema.safeParse(value)
  if (parsed.success) return parsed.data
  const issue = parsed.error.issues[0]!
  const where = issue.path.length ? ` at ${issue.path.join('.')}` : ''
  throw new Error(`${file} is not ${what}${where}: ${issue.message}`)
}
