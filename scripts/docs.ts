// Writes the reference that comes from the code: docs/settings.md from the settings table, the JSON schemas
// of what citadel prints and keeps (docs/json/*.schema.json) from its zod schemas, and docs/json.md with the
// change actions a run can report. `npm run docs` refreshes them; test/cli/docs.test.ts fails when one is stale.
import { mkdirSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { z } from 'zod'
import { backupStatusSchema } from '../lib/backup/status.ts'
import { CHANGE_ACTIONS } from '../lib/core/actions.ts'
import { jsonTaskSchema, runReportSchema } from '../lib/core/report.ts'
import { healthReportSchema } from '../lib/health/health.ts'
import { SETTINGS } from '../lib/infra/config.ts'
import { monitorStateSchema } from '../lib/monitor/monitor.ts'
import { backupMetaSchema, catalogSchema, verifyStateSchema } from '../lib/infra/schemas.ts'

export const REFRESH = 'npm run docs'

/** `backup status --json`: a run report whose one task carries the store's status as its data ({} when it failed). */
export const backupStatusReportSchema = runReportSchema.extend({
  tasks: z.array(jsonTaskSchema.extend({ data: z.union([backupStatusSchema, z.strictObject({})]) })),
})

interface JsonDocument {
  file: string
  title: string
  where: string
  schema: z.ZodType
  /** The part whose fields the reference lists, and where it sits, when the rest is listed elsewhere. */
  fields?: { schema: z.ZodType; at: string }
}

/** Every JSON document citadel prints or keeps, with the schema it follows. */
export const JSON_DOCUMENTS: JsonDocument[] = [
  { file: 'run-report', title: 'Run report', where: '`citadel run PLAYBOOK --json`, `citadel task TASK --json`, and the `backup` commands with `--json`', schema: runReportSchema },
  { file: 'backup-status', title: 'Backup status', where: '`citadel backup status --json` (and `--remote`): a run report whose task carries the store in `data`', schema: backupStatusReportSchema, fields: { schema: backupStatusSchema, at: 'tasks[].data' } },
  { file: 'health-report', title: 'Health report', where: '`citadel health-check --json`, `<app root>/state/health.json`', schema: healthReportSchema },
  { file: 'monitor-state', title: 'monitor.json', where: "`<app root>/state/monitor.json`: the monitor's own state, written by the monitor alone each cycle (health.json is the same report whoever writes it)", schema: monitorStateSchema },
  { file: 'backup-meta', title: 'backup.json', where: '`<backup>/backup.json` in every complete backup, local or remote', schema: backupMetaSchema },
  { file: 'files', title: 'files.json', where: '`<backup>/files.json`: the size of every file and the target of every symlink under `data/`', schema: catalogSchema },
  { file: 'verify-state', title: 'verify-state.json', where: '`<backup>/verify-state.json`: when each file last hashed as the manifest says', schema: verifyStateSchema },
]

type JsonSchema = {
  type?: string | string[]; format?: string; description?: string; enum?: unknown[]; const?: unknown
  properties?: Record<string, JsonSchema>; required?: string[]; items?: JsonSchema | false; prefixItems?: JsonSchema[]
  anyOf?: JsonSchema[]; additionalProperties?: JsonSchema | boolean
}

const jsonSchemaOf = (schema: z.ZodType) => z.toJSONSchema(schema) as JsonSchema & Record<string, unknown>

const cell = (text: string) => text.replaceAll('|', '\\|').replaceAll('<', '&lt;').replaceAll('\n', ' ')
const code = (text: string) => `\`${text}\``

/** A field's type in a few words: `string or null`, `array of object`, one of the enum's values. */
function typeOf(s: JsonSchema): string {
  if (s.anyOf) return s.anyOf.map(typeOf).join(' or ')
  if (Array.isArray(s.type)) return s.type.map((t) => typeOf({ ...s, type: t })).join(' or ')
  // A long list of values has its own table (the change actions): the schema file holds them all.
  if (s.enum && s.enum.length > 8) return `${s.type ?? 'value'}, one of ${s.enum.length}`
  if (s.enum) return s.enum.map((v) => code(String(v))).join(', ')
  if (s.const !== undefined) return code(JSON.stringify(s.const))
  if (s.type === 'array') return s.prefixItems ? `[${s.prefixItems.map(typeOf).join(', ')}]` : `array of ${s.items ? typeOf(s.items) : 'anything'}`
  if (s.type === 'object' && !s.properties && typeof s.additionalProperties === 'object') return `object of ${typeOf(s.additionalProperties)}`
  if (s.type === 'string' && s.format === 'date-time') return 'ISO time'
  return s.type === undefined ? 'anything' : String(s.type)
}

/** One row per field, nested fields as `a.b` and array items as `a[].b`, each with its type and meaning. */
function fieldRows(s: JsonSchema, prefix = ''): string[][] {
  const inner = s.anyOf?.find((b) => b.type !== 'null' && (b.properties || b.items)) ?? s
  if (inner.type === 'array' && inner.items) return fieldRows(inner.items, `${prefix}[]`)
  if (inner.type === 'object' && !inner.properties && typeof inner.additionalProperties === 'object') {
    const value = inner.additionalProperties
    const own = prefix === '' ? [[code('*'), cell(typeOf(value)), cell(inner.description ?? '')]] : []
    return [...own, ...fieldRows(value, `${prefix}.*`)]
  }
  const rows: string[][] = []
  for (const [name, field] of Object.entries(inner.properties ?? {})) {
    const at = prefix ? `${prefix}.${name}` : name
    const optional = inner.required?.includes(name) ? '' : ' (optional)'
    rows.push([code(at), cell(typeOf(field) + optional), cell(field.description ?? '')])
    rows.push(...fieldRows(field, at))
  }
  return rows
}

const table = (head: string[], rows: string[][]) =>
  [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n')

const GENERATED = (source: string) => `<!-- Generated from ${source} by \`${REFRESH}\`: edit the code, not this file. -->`

function settingsDoc(): string {
  const rows = Object.entries(SETTINGS).map(([name, spec]) => [code(name), spec.default === undefined ? '(unset)' : code(spec.default), cell(spec.doc)])
  return `${GENERATED('lib/infra/config.ts (SETTINGS)')}

# Settings

citadel reads each setting from the process environment first, then a \`.env\` file (the project root's, or the
file named by \`CITADEL_ENV_FILE\`), then the defaults below. \`.env.example\` lists them all with a comment each.
Invalid values stop citadel before it touches anything: one line per bad setting, naming it, the value and what
is expected, and exit code 4.

${table(['setting', 'default', 'meaning'], rows)}

- Booleans take \`true/false\`, \`1/0\` or \`yes/no\`. Paths are normalised (\`/opt/citadel/\` is \`/opt/citadel\`).
- The app, models and backup roots must be three different directories, none inside another.
- A warning threshold must be below its critical one.
- A name in the env file or the environment that starts like a setting (\`CITADEL_\`, \`MODEL_\`, \`SYMLINK_\`,
  \`STORAGE_\`, \`BACKUP_\`) but is none is a warning on stderr, once per run (never on stdout), and the run goes
  on: \`citadel: warning: BACKUP_RETENTON_DAYS (line 3 of /etc/citadel.env) is not a citadel setting and is
  ignored; did you mean BACKUP_RETENTION_DAYS?\`. Not warned: \`CITADEL_ENV_FILE\`, \`CITADEL_DEMO_DIR\`, and the
  \`CITADEL_MODEL_<ALIAS>\` variables storage-env.sh exports for the registered models.
`
}

function jsonDoc(): string {
  const documents = JSON_DOCUMENTS.map((d) => [`[${d.title}](json/${d.file}.schema.json)`, d.where])
  const actions = Object.entries(CHANGE_ACTIONS).map(([action, meaning]) => [code(action), cell(meaning)])
  const sections = JSON_DOCUMENTS.map((d) => {
    const rows = d.fields ? fieldRows(jsonSchemaOf(d.fields.schema), d.fields.at) : fieldRows(jsonSchemaOf(d.schema))
    return `## ${d.title}\n\n${d.where}. Schema: [json/${d.file}.schema.json](json/${d.file}.schema.json).\n\n${table(['field', 'type', 'meaning'], rows)}`
  })
  return `${GENERATED('the zod schemas in lib/ and lib/core/actions.ts')}

# JSON output and files

\`--json\` prints exactly one document on stdout: progress and warnings go nowhere, errors to stderr. The files
citadel keeps are read back through the same schemas, so a file cut short or edited by hand is refused with one
line naming the file and the first field that is wrong. Each schema below is JSON Schema (draft 2020-12), made
from the zod schema the code uses.

${table(['document', 'printed or kept by'], documents)}

## Change actions

\`tasks[].changes[].action\` is one of these; \`before\` and \`after\` are \`null\` when absent.

${table(['action', 'meaning'], actions)}

## Task data

\`tasks[].data\` holds each task's own figures: \`verify-prereq\` → \`checks[]\` (\`check\`, \`status\`, \`detail\`);
\`verify-symlinks\` → \`links[]\` (as \`symlinks[]\` in the health report); \`create-symlinks\` → \`links\`, \`waiting\`;
\`repair-symlinks\` → \`repairs[]\`, \`waiting\`; \`create-dirs\` → \`directories\`; \`backup-create\` → \`backup\`, \`type\`,
\`source\`, \`parent\`, \`files\`, \`bytes\`, \`copied_bytes\`, \`hashed_bytes\`, \`reused_hashes\`, \`rsync_exit\`;
\`backup-verify\` → \`backup\`, \`verification\` (as appended to \`verifications[]\` in backup.json), \`sampled[]\`;
\`backup-cleanup\` → \`days\`, \`keep_min\`, \`backups[]\` (\`name\`, \`age\`, \`verdict\`), \`removed[]\`, \`freed_bytes\`,
\`partials[]\`, \`damaged[]\`; \`backup-status\` → the [backup status](#backup-status); \`health-report\` → the
[health report](#health-report).

${sections.join('\n\n')}
`
}

/** Every generated file, by its path from the project root, with the content it should have. */
export function generatedDocs(): Map<string, string> {
  const files = new Map<string, string>([['docs/settings.md', settingsDoc()], ['docs/json.md', jsonDoc()]])
  for (const d of JSON_DOCUMENTS) files.set(`docs/json/${d.file}.schema.json`, JSON.stringify(jsonSchemaOf(d.schema), null, 2) + '\n')
  return files
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)))
  for (const [file, content] of generatedDocs()) {
    mkdirSync(path.dirname(path.join(root, file)), { recursive: true })
    writeFileSync(path.join(root, file), content)
    process.stdout.write(`wrote ${file}\n`)
  }
}
