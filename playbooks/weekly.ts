// Weekly: a full backup of the active models, a verification of a sample of it, the verified backup sent
// off the host when BACKUP_REMOTE is set (and a sample of the remote copy verified there), old backups gone
// on both sides, and the model disk's I/O measured so a slowing disk shows up week over week.
import backupCleanup from '../tasks/backup-cleanup.ts'
import backupCreate from '../tasks/backup-create.ts'
import backupVerify from '../tasks/backup-verify.ts'
import checkPerf from '../tasks/check-perf.ts'
import remoteBackupCleanup from '../tasks/remote-backup-cleanup.ts'
import remoteBackupCreate from '../tasks/remote-backup-create.ts'
import remoteBackupVerify from '../tasks/remote-backup-verify.ts'
import { definePlaybook, type When } from '../lib/task.ts'

const remoteSet: When = { test: (s) => s.backup.remote !== undefined, otherwise: 'BACKUP_REMOTE is not set' }

export default definePlaybook({
  name: 'weekly',
  description: 'Full backup of the active models, verify a sample, send it to BACKUP_REMOTE and verify there, remove backups past retention, measure disk I/O',
  tasks: [
    { task: backupCreate, args: { type: 'full' } },
    backupVerify,
    { task: remoteBackupCreate, when: remoteSet },
    { task: remoteBackupVerify, when: remoteSet },
    backupCleanup,
    { task: remoteBackupCleanup, when: remoteSet },
    checkPerf,
  ],
})
