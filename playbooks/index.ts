// Every playbook `citadel run NAME` knows. A new playbook file is added here.
import type { Playbook } from '../lib/core/task.ts'
import daily from './daily.ts'
import emergency from './emergency.ts'
import initialSetup from './initial-setup.ts'
import installServices from './install-services.ts'
import recover from './recover.ts'
import weekly from './weekly.ts'

export const playbooks: Playbook[] = [initialSetup, daily, weekly, emergency, recover, installServices]
