// Install services: the systemd units of the monitor and of the daily and weekly timers, enabled where systemd runs.
import enableServices from '../tasks/enable-services.ts'
import writeUnits from '../tasks/write-units.ts'
import { definePlaybook } from '../lib/core/task.ts'

export default definePlaybook({
  name: 'install-services',
  description: 'Write the systemd units of the monitor and of the daily and weekly timers; enable and start them where systemd runs',
  onFailure: 'rollback',
  tasks: [writeUnits, enableServices],
})
