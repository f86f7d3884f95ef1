// Weekly: a full backup of the active models, a verification of a sample of it, old backups go, and the
// model disk's I/O is measured so a slowing disk shows up week over week.
import backupCleanup from '../tasks/backup-cleanup.ts'
import backupCreate from '../tasks/backup-create.ts'
import backupVerify from '../tasks/backup-verify.ts'
import checkPerf from '../tasks/check-perf.ts'
import { definePlaybook } from '../lib/task.ts'

export default definePlaybook({
  name: 'weekly',
  description: 'Full backup of the active models, verify a sample of it, remove backups past retention, measure disk I/O',
  tasks: [{ task: backupCreate, args: { type: 'full' } }, backupVerify, backupCleanup, checkPerf],
})
