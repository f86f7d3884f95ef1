// Recover: a new, empty model disk (or one whose models are lost) gets the layout, every model of the
// newest backup back, verified before it goes live, the links and storage-env.sh, and a health report.
// From the backup disk; when that holds no complete backup and BACKUP_REMOTE is set, from there. A replaced
// model disk is marked first (citadel task mark-roots --new-disk): until then every step that writes to it
// is refused. A dead backup disk is not laid out again: its empty mount point is no place for backups.
import backupRestore from '../tasks/backup-restore.ts'
import createDirs from '../tasks/create-dirs.ts'
import createSymlinks from '../tasks/create-symlinks.ts'
import healthReport from '../tasks/health-report.ts'
import verifyPrereq from '../tasks/verify-prereq.ts'
import verifySymlinks from '../tasks/verify-symlinks.ts'
import writeEnvScript from '../tasks/write-env-script.ts'
import { definePlaybook } from '../lib/core/task.ts'

export default definePlaybook({
  name: 'recover',
  description: 'Lay out a new model disk, restore every model from the newest backup (local, else BACKUP_REMOTE), verified, then the links, storage-env.sh and a health report',
  // What was restored and verified stays in place when a later step fails: the operator fixes that step.
  onFailure: 'continue',
  tasks: [
    verifyPrereq,
    { task: createDirs, args: { recovering: true } },
    { task: backupRestore, args: { fallback: true }, needs: [createDirs] },
    createSymlinks,
    verifySymlinks,
    writeEnvScript,
    healthReport,
  ],
})
