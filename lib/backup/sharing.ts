// Hard-link accounting of local backups: an incremental shares every unchanged file with its parent through
// a hard link, so the bytes a backup holds alone, and what removing some backups frees, come from inodes.
import path from 'node:path'
import { walkTree } from '../infra/tree.ts'
import { DATA, type Backup } from './store.ts'

/**
 * Which backups hold each file of their data/. A file with a single link belongs to its backup alone, so
 * only its size is kept; files with more links are keyed by inode with the backups that reference them.
 */
export interface Sharing {
  sole: Map<string, number>
  linked: Map<string, { size: number; holders: Set<string> }>
}

export function sharing(backups: Backup[]): Sharing {
  const result: Sharing = { sole: new Map(), linked: new Map() }
  for (const backup of backups) {
    let sole = 0
    for (const file of walkTree(path.join(backup.dir, DATA)).files) {
      if (file.nlink === 1) {
        sole += file.size
        continue
      }
      const key = `${file.dev}:${file.ino}`
      const entry = result.linked.get(key) ?? { size: file.size, holders: new Set<string>() }
      entry.holders.add(backup.name)
      result.linked.set(key, entry)
    }
    result.sole.set(backup.name, sole)
  }
  return result
}

/** Bytes that removing the backups `names` gives back: files none of the other backups holds, each once. */
export function bytesHeldOnlyBy(shared: Sharing, names: string[]): number {
  const removed = new Set(names)
  let total = names.reduce((sum, name) => sum + (shared.sole.get(name) ?? 0), 0)
  for (const { size, holders } of shared.linked.values()) if ([...holders].every((h) => removed.has(h))) total += size
  return total
}
