#!/usr/bin/env node
// Starts citadel from its TypeScript sources with no build step to remember: the sources are bundled
// by esbuild into a cache directory (see cacheBase) the first time and again whenever a source file changes
// (checked by mtime and size of every source the bundle was made from, a few stat calls), so an edited
// task takes effect on the next run, and a warm start costs plain Node plus what the command loads.
import { createHash } from 'node:crypto'
import { lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import vm from 'node:vm'

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)))
/**
 * Where builds live: where this user can always write, so a sandboxed unit needs no special case. systemd's
 * CacheDirectory= (CACHE_DIRECTORY), else XDG_CACHE_HOME, else a directory of this user's own in the temp
 * directory.
 */
function cacheBase() {
  const systemd = process.env.CACHE_DIRECTORY?.split(':')[0]
  if (systemd && path.isAbsolute(systemd)) return systemd
  const xdg = process.env.XDG_CACHE_HOME
  if (xdg && path.isAbsolute(xdg)) return path.join(xdg, 'citadel')
  return path.join(os.tmpdir(), `citadel-${process.getuid?.() ?? 'user'}`)
}
const base = cacheBase()
// Keyed by the checkout's path: two checkouts never load each other's build.
const cacheDir = path.join(base, createHash('sha1').update(root).digest('hex').slice(0, 12))

/**
 * Code from the cache runs, as root too: the cache must be a real directory of this user that nobody else
 * can write, or someone could plant a build in a shared temp directory before citadel makes its own.
 */
function trusted(dir) {
  const st = lstatSync(dir, { throwIfNoEntry: false })
  return Boolean(st?.isDirectory() && st.uid === (process.getuid?.() ?? st.uid) && (st.mode & 0o022) === 0)
}
const stampFile = path.join(cacheDir, 'current.json')
const STALE_BUILD_MS = 24 * 3600 * 1000

const fingerprint = (file) => {
  const st = statSync(path.join(root, file), { throwIfNoEntry: false })
  return st ? `${st.mtimeMs}:${st.size}:${st.ino}` : 'absent'
}

const readStamp = () => {
  try {
    return JSON.parse(readFileSync(stampFile, 'utf8'))
  } catch {
    return null
  }
}

function currentBuild() {
  if (!trusted(base) || !trusted(cacheDir)) return null
  const stamp = readStamp()
  if (!stamp) return null
  for (const [file, print] of Object.entries(stamp.inputs)) if (fingerprint(file) !== print) return null
  return path.join(cacheDir, stamp.dir)
}

/** esbuild's errors as `file:line:column: text`, or null for an error that is not a build failure. */
const buildErrors = (err) => (Array.isArray(err?.errors) && err.errors.length
  ? err.errors.map((e) => (e.location ? `${e.location.file}:${e.location.line}:${e.location.column}: ${e.text}` : e.text)).join('; ')
  : null)

/** The build the stamp names, whatever changed since, while it is still on disk. */
function lastGoodBuild() {
  if (!trusted(base) || !trusted(cacheDir)) return null
  const stamp = readStamp()
  return stamp && statSync(path.join(cacheDir, stamp.dir, 'cli.js'), { throwIfNoEntry: false }) ? path.join(cacheDir, stamp.dir) : null
}

async function build() {
  const { build: esbuild } = await import('esbuild')
  mkdirSync(cacheDir, { recursive: true, mode: 0o700 })
  if (!trusted(base) || !trusted(cacheDir)) throw Object.assign(new Error(`${base} is not a directory of this user's alone`), { code: 'EACCES' })
  const dir = `build-${Date.now()}-${process.pid}`
  const result = await esbuild({
    absWorkingDir: root,
    entryPoints: { cli: 'lib/cli/main.ts' },
    outdir: path.join(cacheDir, dir),
    bundle: true,
    // One CommonJS file, dependencies included, run as a script with V8's code cache (see runBundle): a start
    // then costs plain Node plus a few milliseconds, not the parse and compile of 2 MB of JavaScript.
    format: 'cjs',
    platform: 'node',
    target: 'node20',
    external: ['esbuild', 'tsx'],
    // The bundle lives in the cache, away from the checkout: it finds the checkout (its .env, the hashing
    // worker, node_modules for esbuild and tsx) by this name, not by walking up from itself.
    define: { __CITADEL_CHECKOUT__: JSON.stringify(root) },
    metafile: true,
    // A failure is reported once, by the caller: its message names each file and line.
    logLevel: 'silent',
  })
  // The project's own sources by their stamps; the bundled dependencies by the record npm rewrites on
  // every install.
  const sources = Object.keys(result.metafile.inputs).filter((file) => !file.startsWith('node_modules/'))
  const inputs = Object.fromEntries([...sources, 'node_modules/.package-lock.json'].map((file) => [file, fingerprint(file)]))
  const tmp = `${stampFile}.${process.pid}`
  writeFileSync(tmp, JSON.stringify({ dir, inputs }))
  renameSync(tmp, stampFile)
  // Older builds may still be loading chunks in a long-running process; only day-old ones go.
  for (const old of readdirSync(cacheDir)) {
    if (old.startsWith('build-') && old !== dir && Date.now() - statSync(path.join(cacheDir, old)).mtimeMs > STALE_BUILD_MS)
      rmSync(path.join(cacheDir, old), { recursive: true, force: true })
  }
  return path.join(cacheDir, dir)
}

/**
 * Runs a build's cli.js and returns its exports, with the code V8 compiled for it on an earlier run: a
 * compiled script, unlike an ES module, can take a code cache on Node 20. The cache is written once, after
 * the first command that ran from this build (see saveCodeCache), and again whenever V8 rejects it, after
 * a Node upgrade for one.
 */
function runBundle(dir) {
  const file = path.join(dir, 'cli.js')
  const cacheFile = path.join(dir, 'cli.code-cache')
  let cachedData
  try {
    cachedData = readFileSync(cacheFile)
  } catch {
    // None yet: this run makes it.
  }
  const script = new vm.Script(`(function (exports, require, module, __filename, __dirname) {${readFileSync(file, 'utf8')}\n})`, { filename: file, cachedData })
  const module = { exports: {} }
  // External packages (esbuild, tsx) resolve from the checkout: the cache directory has no node_modules.
  script.runInThisContext()(module.exports, createRequire(path.join(root, 'package.json')), module, file, dir)
  if (!cachedData || script.cachedDataRejected) saveCodeCache = () => {
    const tmp = `${cacheFile}.${process.pid}`
    try {
      writeFileSync(tmp, script.createCachedData())
      renameSync(tmp, cacheFile)
    } catch {
      // Only a cache: a full disk or a read-only cache directory costs the next start some milliseconds.
      rmSync(tmp, { force: true })
    }
  }
  return module.exports
}
let saveCodeCache = () => {}

/** The CLI module: the cached bundle, or, where this user has no cache to trust, the sources via tsx. */
async function loadCli() {
  let dir = currentBuild()
  if (!dir) {
    try {
      dir = await build()
    } catch (err) {
      // A slip in a quick edit of one file must not take every command down, health-check and the monitor
      // included: the last build that worked runs, and every run says loudly which file and line to fix.
      const where = buildErrors(err)
      const last = where && lastGoodBuild()
      if (last) {
        process.stderr.write(`citadel: warning: the sources do not build (${where}); running the last build that did, without that change, until it is fixed\n`)
        return runBundle(last)
      }
      if (!['EACCES', 'EPERM', 'EROFS'].includes(err.code)) throw err
      const { register } = await import('tsx/esm/api')
      register()
      return import(pathToFileURL(path.join(root, 'lib', 'cli', 'main.ts')).href)
    }
  }
  return runBundle(dir)
}

const argv = process.argv.slice(2)
// A monitoring plugin answers UNKNOWN (3) whatever fails, even before main() or outside it: Nagios reads
// 1 as WARNING. main() handles what escapes a command; this is for the rest.
const plugin = argv[0] === 'health-check' || (argv[0] === 'monitor' && argv.includes('--once'))
function crash(what, err) {
  const detail = buildErrors(err) ?? String(err?.message ?? err).split('\n')[0]
  if (plugin && !argv.includes('--json')) process.stdout.write(`CITADEL UNKNOWN - ${what}: ${detail}\n`)
  if (buildErrors(err)) process.stderr.write(`citadel: the sources do not build, and no earlier build is there to fall back on: ${detail}; fix that file (git diff shows what changed)\n`)
  else process.stderr.write(`citadel: internal error (a bug in citadel, please report it), ${what}: ${err?.stack ?? err}\n`)
  process.exit(plugin ? 3 : 1)
}
process.on('uncaughtException', (err) => crash('citadel itself failed', err))
process.on('unhandledRejection', (err) => crash('citadel itself failed', err))
let cli
try {
  cli = await loadCli()
} catch (err) {
  crash('citadel cannot start', err)
}
const code = await cli.main(argv)
saveCodeCache()
cli.exitWhenFlushed(code)
