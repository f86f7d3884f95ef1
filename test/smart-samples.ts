// SMART documents as smartctl 7.3 prints them, built for the tests that need one drive in a given state.

/** A healthy NVMe drive; `edit` changes its health log (or the whole document) before it is returned. */
export function nvme(edit: (log: any, doc: any) => void = () => {}): any {
  const doc = {
    smartctl: { version: [7, 3], exit_status: 0 },
    device: { name: '/dev/nvme0', type: 'nvme', protocol: 'NVMe' },
    model_name: 'Samsung SSD 990 PRO 2TB',
    serial_number: 'S7',
    smart_status: { passed: true, nvme: { value: 0 } },
    nvme_smart_health_information_log: { critical_warning: 0, temperature: 40, available_spare: 100, available_spare_threshold: 10, percentage_used: 3, media_errors: 0 },
    temperature: { current: 40 },
    power_on_time: { hours: 1200 },
  }
  edit(doc.nvme_smart_health_information_log, doc)
  return doc
}
