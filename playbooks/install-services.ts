// Install services: the systemd units of the monitor and of the daily and weekly timers, enabled where systemd runs.
import installServices from '../tasks/install-services.ts'
import { definePlaybook } from '../lib/core/task.ts'

export default definePlaybook({
  name: 'install-services',
  description: 'Write the systemd units of the monitor and of the daily and weekly timers; enable and start them where systemd runs',
  onFailure: 'rollback',
  tasks: [installServices],
})
