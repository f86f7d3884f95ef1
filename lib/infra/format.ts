// How citadel writes numbers, sizes, times and lists for an operator: one way each, everywhere.

/** Lines of `before` missing from `after` as '-', new ones as '+', in order (longest common subsequence). */
export function lineDiff(before: string, after: string): string[] {
  const a = before.split('\n')
  const b = after.split('\n')
  const lcs: number[][] = Array.from({ length: a.length + 1 }, () => new Array<number>(b.length + 1).fill(0))
  for (let i = a.length - 1; i >= 0; i--)
    for (let j = b.length - 1; j >= 0; j--)
      lcs[i]![j] = a[i] === b[j] ? lcs[i + 1]![j + 1]! + 1 : Math.max(lcs[i + 1]![j]!, lcs[i]![j + 1]!)
  const out: string[] = []
  let i = 0
  let j = 0
  while (i < a.length || j < b.length) {
    if (i < a.length && j < b.length && a[i] === b[j]) (i++, j++)
    else if (j < b.length && (i === a.length || lcs[i]![j + 1]! >= lcs[i + 1]![j]!)) out.push('+ ' + b[j++])
    else out.push('- ' + a[i++])
  }
  return out
}

/** The first few items joined by '; ', then how many more: keeps a task's msg to one readable line. */
export function summarize(items: string[], shown = 3): string {
  return items.slice(0, shown).join('; ') + (items.length > shown ? `; and ${items.length - shown} more` : '')
}

/** 1 backup, 2 backups: a count with its noun. */
export const count = (n: number, noun: string) => `${n} ${noun}${n === 1 ? '' : 's'}`

/** Left-aligned columns, two spaces apart. */
export function table(rows: string[][]): string[] {
  const widths = rows[0]?.map((_, col) => Math.max(...rows.map((r) => (r[col] ?? '').length))) ?? []
  return rows.map((r) => r.map((cell, col) => (col === r.length - 1 ? cell : cell.padEnd(widths[col]!))).join('  '))
}

/** 1536 → "1.5 KiB": binary units, as du -h and df -h print them. */
export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']
  let i = 0
  while (Math.abs(n) >= 1024 && i < units.length - 1) (n /= 1024, i++)
  return i === 0 ? `${n} B` : `${n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0)} ${units[i]}`
}

/** "1.2 GiB of 4.0 GiB (30%), 512 MiB/s, 6s left": a progress line for something measured in bytes. */
export function progressLine(verb: string, done: number, total: number, startedAt: number): string {
  const seconds = (Date.now() - startedAt) / 1000
  const rate = seconds > 0 ? done / seconds : 0
  // The first second's rate says more about start-up than about the disk.
  const left = seconds >= 1 && rate > 0 && total > done ? Math.round((total - done) / rate) : null
  const eta = left === null ? '' : `, ${duration(left * 1000, { seconds: true })} left`
  return `${verb} ${bytes(done)} of ${bytes(total)} (${total > 0 ? percent(Math.min(1, done / total), 0) : '100%'}), ${bytes(Math.round(rate))}/s${eta}`
}

/** 0.8734 → "87.3%", null → "-". Rounded down: a disk 99.96% full must not read as 100%, nor a copy 99.6% done as finished. */
export function percent(ratio: number | null, decimals = 1): string {
  if (ratio === null) return '-'
  const scale = 10 ** decimals
  return `${(Math.floor(ratio * 100 * scale + 1e-9) / scale).toFixed(decimals)}%`
}

export const DAY_MS = 86_400_000

/**
 * 3d 4h, 5h 12m, 7m: a span of time (an age, a wait) to the precision an operator reads. With `seconds`, spans
 * under an hour show them (7m 5s, 42s): for what is left of a copy.
 */
export function duration(ms: number, { seconds: withSeconds = false } = {}): string {
  const seconds = Math.max(0, Math.floor(ms / 1000))
  const [days, hours, minutes, rest] = [Math.floor(seconds / 86_400), Math.floor(seconds / 3600) % 24, Math.floor(seconds / 60) % 60, seconds % 60]
  if (days) return `${days}d ${hours}h`
  if (hours) return `${hours}h ${minutes}m`
  if (!withSeconds) return `${minutes}m`
  return minutes ? `${minutes}m ${rest}s` : `${rest}s`
}
