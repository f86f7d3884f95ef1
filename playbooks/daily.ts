// Daily: an incremental backup of the active models (unchanged files cost no space), when enabled.
import backupCreate from '../tasks/backup-create.ts'
import { definePlaybook } from '../lib/task.ts'

export default definePlaybook({
  name: 'daily',
  description: 'Incremental backup of the active models when MODEL_AUTO_BACKUP is true',
  tasks: [{ task: backupCreate, args: { type: 'incremental' }, when: { test: (s) => s.modelAutoBackup, otherwise: 'MODEL_AUTO_BACKUP is false' } }],
})
