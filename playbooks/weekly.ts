// Weekly: a full backup of the active models, a verification of a sample of it, then old backups go.
import backupCleanup from '../tasks/backup-cleanup.ts'
import backupCreate from '../tasks/backup-create.ts'
import backupVerify from '../tasks/backup-verify.ts'
import { definePlaybook } from '../lib/task.ts'

export default definePlaybook({
  name: 'weekly',
  description: 'Full backup of the active models, verify a sample of it, remove backups past retention',
  tasks: [{ task: backupCreate, args: { type: 'full' } }, backupVerify, backupCleanup],
})
