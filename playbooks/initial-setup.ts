// First setup of a server: check it, mark the disk roots (before anything is laid out on them), lay out
// the tree, link the app to the model disk, write vLLM's env, then a first health report.
import healthReport from '../tasks/health-report.ts'
import createDirs from '../tasks/create-dirs.ts'
import createSymlinks from '../tasks/create-symlinks.ts'
import markRoots from '../tasks/mark-roots.ts'
import verifyPrereq from '../tasks/verify-prereq.ts'
import verifySymlinks from '../tasks/verify-symlinks.ts'
import writeEnvScript from '../tasks/write-env-script.ts'
import { definePlaybook } from '../lib/core/task.ts'

export default definePlaybook({
  name: 'initial-setup',
  description: 'Check prerequisites, create the directory tree and links, write storage-env.sh, report health',
  // A first setup half done is worse than none: the operator fixes the cause and runs it again.
  onFailure: 'rollback',
  tasks: [verifyPrereq, markRoots, createDirs, createSymlinks, verifySymlinks, writeEnvScript, healthReport],
})
